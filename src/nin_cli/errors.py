"""The exceptions the CLI maps to exit codes (see README, "Exit codes").

Every anticipated failure raises one of these with a one-line message; `cli.main` prints the line and exits
with the class's code. Anything else is a bug: exit 1 and the traceback goes to a log file (or the temp directory,
or the line says it could not be saved: never a second traceback).

Paths: a place to write that the command line names or implies (`hydra.run.dir`, `--out`, the default output
folder) and that is a file, lies under a file or is not writable is a ConfigError (2): the fix is another path on
the command line. A file inside an existing run directory, or any file read, that is not what it should be (a
folder where train.log should be, undecodable metrics, a checkpoint whose config does not fit its weights or
with non-finite weights) is a DataError (3).
"""


class NinError(Exception):
    exit_code = 1


class ConfigError(NinError):
    """Bad command line or config: unknown key, wrong type, out-of-range value, unknown group option."""

    exit_code = 2


class UnknownKeyError(ConfigError):
    """A config key nin's schema does not have: a sweep stops on it at once (every job would carry it)."""


class DataError(NinError):
    """A file that is not what it claims: missing or corrupt dataset, truncated or corrupt checkpoint, full disk."""

    exit_code = 3


class UnsafeFileError(NinError):
    """A file refused because loading it could run code (pickled objects, TorchScript given as a checkpoint)."""

    exit_code = 4


class DivergedError(NinError):
    """Training diverged: a non-finite loss, or the loss stuck at chance (ln C)."""

    exit_code = 5


class CollapsedError(DivergedError):
    """Training collapsed to chance; `step` is where it began, `seed` the trainer seed of the run that collapsed.
    `absorbing`: every image gets the same output (the step guard; no gradient can bring it back, so a restart
    with another seed is the only way on); False: the loss sat near ln C for whole epochs (the epoch guard, a stall:
    slow but maybe alive, never restarted)."""

    def __init__(self, message: str, step: int, seed: int, absorbing: bool = True):
        super().__init__(message)
        self.step, self.seed, self.absorbing = step, seed, absorbing

    def __reduce__(self):  # crosses process boundaries (sweep launchers)
        return type(self), (str(self), self.step, self.seed, self.absorbing)


class CheckFailed(NinError):
    """A result that was checked does not hold: `nin table --check` with a row not reproduced, an export whose
    runtime disagrees with the eager model."""

    exit_code = 6


class Interrupted(NinError):
    """Ctrl-C (130) or SIGTERM (143) after the checkpoint was written."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):  # crosses process boundaries (sweep launchers): keep the exit code
        return type(self), (str(self), self.exit_code)


class PeerFailed(NinError):
    """Another process of a `trainer.devices=N` run died; the parent reports that process's own error."""


class InterruptedNow(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM: leave at once, without a checkpoint (130 / 143).

    A KeyboardInterrupt, not an Exception, so no `except Exception` on the way up swallows it; files stay whole
    because every write is a temp file plus rename.
    """

    def __init__(self, exit_code: int):
        super().__init__(f"interrupted again: stopped at once (exit {exit_code}); the last checkpoint is kept")
        self.exit_code = exit_code


class DiskFullError(DataError):
    """A write met a full disk or quota: exit 3 like a data error, but never a reason to go on to the next job."""


def full_disk(err: BaseException) -> DataError | None:
    """A write that met a full disk or quota anywhere (a log, metrics.jsonl, a summary, an export) as the one-line
    data error it is, instead of a bug's traceback; None for anything else. Checkpoint saves say more
    (checkpoint.save_checkpoint: the previous checkpoint is intact)."""
    import errno

    if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = f" writing {err.filename}" if err.filename else ""
    return DiskFullError(f"no space left on the device{where} ({err.strerror or 'ENOSPC'}); free space and rerun: "
                         "every file nin writes is written whole or not at all, and a run resumes from its last "
                         "checkpoint")


def save_traceback(preferred, text: str) -> str:
    """Append a bug's traceback to `preferred` (a run's train.log, or outputs/crash-*.log), else to a file in the
    temp directory; returns the words for the one line on screen: "traceback in PATH", or that it could not be
    saved. A log that cannot be written must never become a second traceback."""
    import os
    import tempfile
    import time
    from pathlib import Path

    for path in (Path(preferred), Path(tempfile.gettempdir()) / f"nin-crash-{time.strftime('%Y%m%d-%H%M%S')}-"
                 f"{os.getpid()}.log"):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(text)
            return f"traceback in {path}"
        except OSError:
            continue
    return "the traceback could not be saved (neither the log nor the temp directory is writable)"
