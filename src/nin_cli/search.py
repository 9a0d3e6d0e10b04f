"""`nin sweep --trials N`: a hyper-parameter search with current Optuna, driven directly.

hydra-optuna-sweeper 1.3.0, the plugin's last release, pins optuna<3 (and through it sqlalchemy<2, alembic<1.13), so
nin asks Optuna itself. The search space is written as Hydra's sweep grammar, as before:
`'optim.lr=tag(log,interval(0.01,0.5))'`, `'model.dropout=interval(0,0.7)'`, `'head=choice(gap,fc)'`, `range(1,4)`.

- Planning is `nin sweep`'s: every candidate (interval ends, choices) is composed and checked before any trial.
- Each trial is an ordinary run directory `<sweep dir>/<trial number>/`, trained by a `nin train` process. Its
  validation error is reported to Optuna after every epoch (read from metrics.jsonl); when the pruner says the trial
  is behind, the process gets SIGTERM, saves `last.pt` and the trial is marked pruned (outcome.json, status pruned).
- The study lives in `<sweep dir>/study.journal` (Optuna's journal file: no database). Re-running the same command
  continues it up to N finished trials; a trial that was running when the sweep stopped (Ctrl-C, a crash, a lost
  node) is resumed from its own directory's `last.pt` with the same values.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nin_cli.errors import ConfigError, DataError, Interrupted
from nin_cli.files import atomic_write, number, one_line, read_bytes
from nin_cli.results import read_metrics, read_summary
from nin_cli.runs import write_outcome
from nin_cli.sweep import (
    INSTALL,
    JobRow,
    guarded_sweep_dir,
    job_dirs,
    plan_sweep,
    print_plan,
    quoted_path,
    raise_failed,
    record_failure,
    show_summary,
)

STUDY = "study.journal"
RESULTS = "optimization_results.yaml"
MAX_JOURNAL = 256 * 1024 * 1024  # a study of thousands of trials is a few MB
POLL_S = 1.0  # how often a running trial's metrics.jsonl is read: an epoch takes seconds at the very least


def search_space(lines: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Optuna distributions for the swept overrides, and the fixed overrides every trial gets (hydra.* left out:
    the trial's directory is set per trial)."""
    import optuna.distributions as od
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    space: dict[str, Any] = {}
    fixed: list[str] = []
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element().lstrip("+")  # nin train adds `++` to schema keys itself
        if not override.is_sweep_override():
            if not (key.startswith("hydra.") or key == "sweep"):  # +sweep=NAME only carried the values
                fixed.append(override.input_line)
            continue
        value = override.value()
        if isinstance(value, IntervalSweep):
            log = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                space[key] = od.IntDistribution(value.start, value.end, log=log)
            else:
                space[key] = od.FloatDistribution(float(value.start), float(value.end), log=log)
        elif isinstance(value, ChoiceSweep | RangeSweep):
            space[key] = od.CategoricalDistribution(list(override.sweep_string_iterator()))
        else:
            raise ConfigError(f"'{override.input_line}': a search samples interval(), choice() or range()")
    if not space:
        raise ConfigError("--trials needs a swept key, e.g. 'optim.lr=tag(log,interval(0.01,0.5))'")
    return space, fixed


def open_study(sweep_dir: Path, seed: int, pruner: Any) -> Any:
    """The study in `sweep_dir`'s journal (untrusted input: a cut last line is repaired first; anything Optuna cannot
    read is exit 3 naming the file). TPE is seeded from (seed, trials already in the study), so a continued study
    explores new values instead of drawing the first ones again."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # nin prints its own line per trial
    journal = sweep_dir / STUDY
    repair_journal(journal)
    try:
        storage = JournalStorage(JournalFileBackend(str(journal)))
        study = optuna.create_study(storage=storage, study_name="nin", direction="minimize", pruner=pruner,
                                    load_if_exists=True)
        done = len(study.get_trials(deepcopy=False))
    except Exception as err:  # noqa: BLE001 - whatever a tampered journal makes Optuna raise: name the file
        raise DataError(f"{journal}: not a study Optuna can read ({one_line(err, 120)}); move it away to start "
                        "a new search") from None
    study.sampler = optuna.samplers.TPESampler(seed=seed * 1_000_003 + done)
    return study


def repair_journal(journal: Path) -> None:
    """A journal whose last line was cut (a driver killed mid-append) loses that line: Optuna would append the
    next record to it and leave the study unreadable for good."""
    try:
        data = read_bytes(journal, MAX_JOURNAL)
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        atomic_write(journal, data[:data.rfind(b"\n") + 1])


def origin_number(trial: Any) -> int:
    """The trial number whose directory a trial trains in: its own, or the interrupted one it continues (a number
    below its own; nothing else from the journal names a directory)."""
    origin = trial.user_attrs.get("continues")
    if isinstance(origin, int) and not isinstance(origin, bool) and 0 <= origin < trial.number:
        return origin
    return trial.number


def continue_interrupted(study: Any) -> None:
    """A trial left running by a stopped sweep is closed as failed and asked again with the same values and the
    same directory, so its `nin train` resumes from that directory's last.pt."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"continues": origin_number(trial)})


def finished_trials(study: Any) -> int:
    """Finished trials, an interrupted one counted once (its continuation, not the failed original)."""
    trials = study.get_trials(deepcopy=False)
    return sum(t.state.is_finished() for t in trials) - sum("continues" in t.user_attrs for t in trials)


def trial_overrides(fixed: list[str], params: dict[str, Any]) -> list[str]:
    return [*fixed, *(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
                      for key, value in params.items())]


def _val_errors(run_dir: Path, after: int) -> list[tuple[int, float]]:
    """(epoch, val_error) of every finished epoch after `after` so far. Read while the run appends to it: a line
    still being written ends the list (the next poll reads it whole)."""
    rows = read_metrics(run_dir, running=True)
    found = [(row["epoch"], number(row.get("val_error"))) for row in rows if row["epoch"] > after]
    return [(epoch, value) for epoch, value in found if value is not None]


def _forward_stderr(proc: subprocess.Popen, last: list[str]) -> threading.Thread:
    """Pass the trial's stderr through, keeping its last line: a failed trial's one-line reason."""
    def pump() -> None:
        for line in proc.stderr:
            sys.stderr.write(line)
            if line.strip():
                last[:] = [line.strip().removeprefix("nin: error: ")]

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def run_trial(study: Any, trial: Any, overrides: list[str], run_dir: Path) -> str:
    """Train one trial in its own process, report each epoch's validation error, stop it when pruned. Returns
    the trial's state: complete | pruned | failed."""
    from optuna.trial import TrialState

    command = [sys.executable, "-m", "nin_cli", "train", *overrides, f"hydra.run.dir={quoted_path(run_dir)}",
               "trainer.progress=plain"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    last: list[str] = []
    pump = _forward_stderr(proc, last)
    reported, best, pruned_at = 0, None, None  # reported: the last epoch Optuna has heard of
    try:
        while pruned_at is None:
            running = proc.poll() is None
            for epoch, val_error in _val_errors(run_dir, reported):
                trial.report(val_error, epoch)
                reported, best = epoch, val_error if best is None else min(best, val_error)
                if running and trial.should_prune():
                    pruned_at = epoch
                    proc.send_signal(signal.SIGTERM)  # nin train saves last.pt and exits 143
                    break
            if not running:
                break
            time.sleep(POLL_S)
        code = proc.wait()
    except (KeyboardInterrupt, _Terminated) as err:  # Ctrl-C reached the trial too; SIGTERM is passed on: it saves
        code = 143 if isinstance(err, _Terminated) else 130
        if code == 143:
            proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise Interrupted(f"stopped during trial {trial.number}; re-run the same command to resume it",
                          code) from None
    pump.join()
    finished = code == 0 or (pruned_at is not None and (run_dir / "summary.json").exists())
    if pruned_at is not None and not finished:  # 143, or killed (-15) while it was saving after its last step
        write_outcome(run_dir, "pruned", f"pruned after epoch {pruned_at}", 143, epoch=pruned_at, best_val_error=best)
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    if finished:  # also a run that ended its last epoch as the pruner's SIGTERM arrived
        value = number((read_summary(run_dir) or {}).get("best_val_error"))
        study.tell(trial, float("inf") if value is None else value)
        return "complete"
    if code in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        raise Interrupted(f"trial {trial.number} was stopped by a signal; re-run the same command to resume it",
                          code if code > 0 else 128 - code)
    reason = last[0] if last else f"nin train exited {code}"
    study.tell(trial, record_failure(run_dir, reason, code))  # +inf: the sampler steers away from it
    return "failed"


def write_results(study: Any, sweep_dir: Path) -> None:
    """The best trial so far, in the file the Hydra Optuna plugin wrote (optimization_results.yaml)."""
    import yaml
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value != float("inf")]
    if not done:
        return
    best = min(done, key=lambda t: t.value)
    text = yaml.safe_dump({"name": "optuna", "best_trial": best.number, "best_params": best.params,
                           "best_value": best.value}, sort_keys=False)
    atomic_write(sweep_dir / RESULTS, text)
    print(f"best trial {best.number}: best val error {best.value:.2f}% with "
          + " ".join(f"{k}={v}" for k, v in best.params.items()))


class _Terminated(Exception):
    """SIGTERM to the driver (a scheduler's stop): the running trial is stopped cleanly, then exit 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def make_pruner(name: str) -> Any:
    """median: stop a trial whose validation error is behind the median of the earlier trials' at the same epoch
    (nothing on its first epoch alone: steps are epochs, n_warmup_steps=2; nor before two trials finished)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"--trials needs Optuna, in the sweep extra: {INSTALL}") from None
    if name not in ("median", "none"):
        raise ConfigError(f"--pruner {name}: choose median or none")
    return (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2) if name == "median"
            else optuna.pruners.NopPruner())


def run_search(overrides: list[str], trials: int, seed: int, pruner_name: str, dry_run: bool = False
               ) -> list[JobRow]:
    """Plan and check the candidates, then run trials until the study in the sweep directory has `trials`
    finished ones; summary as `nin sweep` writes it (pruned trials marked)."""
    pruner = make_pruner(pruner_name)
    plan = plan_sweep(overrides, sampled=True)
    space, fixed = search_space(plan.lines)
    if dry_run:
        print_plan(plan)
        return []
    rows: list[JobRow] = []
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with guarded_sweep_dir(plan.sweep_dir):
            study = open_study(plan.sweep_dir, seed, pruner)
            continue_interrupted(study)
            try:
                while finished_trials(study) < trials:
                    trial = study.ask(space)
                    run_dir = plan.sweep_dir / str(origin_number(trial))
                    values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in trial.params.items())
                    print(f"trial {trial.number} ({finished_trials(study) + 1} of {trials}): {values}", flush=True)
                    state = run_trial(study, trial, trial_overrides(fixed, trial.params), run_dir)
                    print(f"trial {trial.number}: {state}", flush=True)
            except _Terminated:  # between trials: nothing runs
                raise Interrupted("SIGTERM: stopped between trials; re-run the same command to continue", 143) from None
            finally:  # also after Ctrl-C: what finished so far
                write_results(study, plan.sweep_dir)
                if job_dirs(plan.sweep_dir):
                    rows = show_summary(plan.sweep_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise_failed(rows)
    return rows
