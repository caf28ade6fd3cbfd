"""Command-line tools: `python -m codec {summary,encode,decode,reconstruct,evaluate} ...`."""
import argparse
import sys

from codec import config as config_lib


def _summary(args: argparse.Namespace) -> None:
  from codec import summary  # pylint: disable=g-import-not-at-top
  print(summary.summarize(config_lib.load(args.config)))


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m codec', description=__doc__)
  commands = parser.add_subparsers(required=True, metavar='COMMAND')
  p = commands.add_parser('summary', help='parameter table, counts, hop, frame rate and bitrate')
  p.add_argument('--config', required=True, help='experiments/<name>.py[:variant]')
  p.set_defaults(run=_summary)
  return parser


def main(argv=None) -> None:
  args = build_parser().parse_args(argv)
  args.run(args)


if __name__ == '__main__':
  sys.path.insert(0, '.')  # experiment files import `experiments.*` relative to the repo root
  main()
