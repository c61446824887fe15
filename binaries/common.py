"""What every binary shares: quiet library logs, and bad input -> exit 1.

Every binary's `main` calls `setup_logging()` first (`run_stage` does it
too). By default the log shows our own INFO progress lines (genrec_jax,
binaries) plus every library's warnings and errors; Orbax's checkpointing
chatter, grain, jax, faiss's loader, transformers... are left out.
`--log_all` (or absl's `--verbosity=1`) shows everything again.
"""
import logging as py_logging
import os
import pathlib
import sys

from absl import flags
from absl import logging

import genrec_jax
from genrec_jax.data.dataset import DataError
from genrec_jax.training import sharding

_LOG_ALL = flags.DEFINE_bool(
    "log_all", False, "Show every library's INFO log lines (Orbax, grain, "
    "jax, faiss, ...), not only ours; as --verbosity=1 does.")

# Folders whose absl INFO lines are our progress lines.
OWN_DIRS = tuple(str(d.resolve()) + os.sep for d in (
    pathlib.Path(__file__).parent, pathlib.Path(genrec_jax.__file__).parent))
# Python logger names (first component) that are ours.
OWN_LOGGERS = ("genrec_jax", "binaries", "__main__")
# Python loggers of libraries that log INFO by themselves: set to WARNING.
# (Orbax and grain log through absl's logger: the handler filter below
# drops their INFO lines by the file they come from.)
QUIET_LOGGERS = ("faiss", "jax", "jaxlib", "orbax", "grain", "etils",
                 "tensorstore", "transformers", "huggingface_hub", "httpx",
                 "urllib3", "filelock", "matplotlib", "PIL", "numexpr",
                 "sklearn", "chex", "flax", "optax")


class OwnInfoFilter(py_logging.Filter):
  """Passes warnings and errors, and INFO/DEBUG lines from our own code."""

  def __init__(self, own_dirs: tuple[str, ...] = OWN_DIRS):
    super().__init__()
    self._own_dirs = own_dirs

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    if record.name == "absl":  # absl.logging: decide by the caller's file
      return os.path.realpath(record.pathname).startswith(self._own_dirs)
    return record.name.split(".")[0] in OWN_LOGGERS


def setup_logging() -> None:
  """Quiets the libraries' INFO lines unless --log_all / --verbosity >= 1.

  Idempotent; call it at the top of `main` (after flags are parsed).
  """
  if _LOG_ALL.value or logging.get_verbosity() >= logging.DEBUG:
    return
  for name in QUIET_LOGGERS:
    py_logging.getLogger(name).setLevel(py_logging.WARNING)
  handlers = set(py_logging.getLogger().handlers)
  handlers.add(logging.get_absl_handler())
  for handler in handlers:
    if not any(isinstance(f, OwnInfoFilter) for f in handler.filters):
      handler.addFilter(OwnInfoFilter())


def run_stage(fn, config, workdir):
  """Runs fn(config, workdir); DataError/ValueError/FileNotFoundError exit 1.

  A multi-process run (binaries/launch_local.py, a TPU pod slice, a GPU
  cluster: the GENREC_* environment, see training/sharding.py) joins its
  processes here, before any JAX computation.
  """
  setup_logging()
  try:
    sharding.maybe_initialize_distributed(config)
    return fn(config, workdir)
  except (DataError, ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    sys.stderr.write(f"error: {e}\n")
    sys.exit(1)
