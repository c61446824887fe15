"""Creates the separate torch venv (`.venv-torch`) used by benchmarks and tests.

  python3 tools/torch_venv.py             # or: make bench-venv
  python3 tools/torch_venv.py --venv=DIR  # elsewhere

torch is never a runtime dependency of genrec_jax: only the torch side of
the benchmarks (`genrec_jax/benchmarks/{decoder,beam_search}.py`), the
transformers round-trip test (`tests/weights_test.py`) and
`tools/make_parity_fixtures.py` run in this venv. It holds the pinned torch
of pyproject's `torch` extra plus the transformers / safetensors / numpy pins
of requirements.txt (`pip install torch==2.13.0` takes the CPU wheel where
one lies in pip's find-links; about 30 s and 1.2 GB here).

Exit status: 0 ready, 3 the venv or the pip install failed or timed out
(e.g. no torch wheel reachable), anything else a bug here.

The venv is complete once `<venv>/.installed` holds the requirement list it
was built from; a run with the same list does nothing, a changed list
rebuilds it. Concurrent runs (pytest-xdist workers) wait on a file lock.
Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import pathlib
import shutil
import subprocess
import sys
import tempfile
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / ".venv-torch"
# Pins taken from requirements.txt besides pyproject's `torch` extra.
FROM_REQUIREMENTS = ("transformers", "safetensors", "numpy")
STAMP = ".installed"
# Exit status when the venv or pip fails (callers may skip on it).
INSTALL_FAILED = 3


def requirements(repo: pathlib.Path = REPO) -> list[str]:
  """The torch extra of pyproject.toml + FROM_REQUIREMENTS pins."""
  project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
  reqs = list(project["optional-dependencies"]["torch"])
  pins = {}
  for line in (repo / "requirements.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    for name in FROM_REQUIREMENTS:
      rest = line[len(name):]
      if line.lower().startswith(name) and rest[:1] in ("=", ">", "<", "~",
                                                         "!", ""):
        pins[name] = line
  return reqs + [pins.get(name, name) for name in FROM_REQUIREMENTS]


def python_of(venv: pathlib.Path = DEFAULT_VENV) -> pathlib.Path:
  return venv / "bin" / "python"


def is_ready(venv: pathlib.Path = DEFAULT_VENV) -> bool:
  """True when the venv was built from the current requirement list."""
  stamp = venv / STAMP
  return (python_of(venv).exists() and stamp.is_file()
          and stamp.read_text() == "\n".join(requirements()) + "\n")


def ensure(venv: pathlib.Path = DEFAULT_VENV, quiet: bool = True,
           timeout: float = 1200) -> pathlib.Path:
  """Builds the venv unless it is ready; returns its python.

  Args:
    venv: venv folder.
    quiet: pass -q to pip.
    timeout: seconds allowed for the whole pip install.

  Returns:
    Path of the venv's python.

  Raises:
    subprocess.CalledProcessError / TimeoutExpired: venv or pip failed
      (the venv is removed so that the next run starts clean).
  """
  venv = pathlib.Path(venv).resolve()
  venv.parent.mkdir(parents=True, exist_ok=True)
  # The lock lives outside the work tree (nothing for git to see).
  key = hashlib.sha1(str(venv).encode()).hexdigest()[:12]
  lock_path = pathlib.Path(tempfile.gettempdir()) / f"torch_venv-{key}.lock"
  with open(lock_path, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here
    if is_ready(venv):
      return python_of(venv)
    reqs = requirements()
    shutil.rmtree(venv, ignore_errors=True)
    q = ["-q"] if quiet else []
    try:
      subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)],
                     check=True, capture_output=quiet, text=True)
      subprocess.run([str(python_of(venv)), "-m", "pip", "install", *q,
                      *reqs], check=True, capture_output=quiet, text=True,
                     timeout=timeout)
    except BaseException:
      shutil.rmtree(venv, ignore_errors=True)
      raise
    (venv / STAMP).write_text("\n".join(reqs) + "\n")
    return python_of(venv)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--venv", default=str(DEFAULT_VENV), help="venv folder")
  ap.add_argument("--print_requirements", action="store_true",
                  help="print the requirement list and exit")
  ap.add_argument("--timeout", type=float, default=1200,
                  help="seconds allowed for the pip install")
  args = ap.parse_args()
  if args.print_requirements:
    print("\n".join(requirements()))
    return
  venv = pathlib.Path(args.venv)
  if is_ready(venv):
    print(f"{venv}: up to date")
    return
  print(f"{venv}: installing {' '.join(requirements())}", flush=True)
  try:
    py = ensure(venv, quiet=False, timeout=args.timeout)
  except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
    print(f"{venv}: not created: {e}", file=sys.stderr)
    sys.exit(INSTALL_FAILED)
  print(f"{venv}: ready ({py})")


if __name__ == "__main__":
  main()
