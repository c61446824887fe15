"""What every stage binary shares: bad input -> one line on stderr, exit 1."""
import sys

from absl import logging

from genrec_jax.data.dataset import DataError


def run_stage(fn, config, workdir):
  """Runs fn(config, workdir); DataError/ValueError/FileNotFoundError exit 1."""
  try:
    return fn(config, workdir)
  except (DataError, ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    sys.stderr.write(f"error: {e}\n")
    sys.exit(1)
