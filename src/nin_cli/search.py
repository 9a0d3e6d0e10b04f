"""`nin sweep --trials N`: a hyper-parameter search with current Optuna, driven directly.

hydra-optuna-sweeper 1.3.0, the plugin's last release, pins optuna<3 (and through it sqlalchemy<2, alembic<1.13), so
nin asks Optuna itself. The search space is written as Hydra's sweep grammar, as before:
`'optim.lr=tag(log,interval(0.01,0.5))'`, `'model.dropout=interval(0,0.7)'`, `'head=choice(gap,fc)'`, `range(1,4)`.

- Planning is `nin sweep`'s: every candidate (interval ends, choices) is composed and checked before any trial.
- Each trial is an ordinary run directory `<sweep dir>/<trial number>/`, trained by a `nin train` process. Its
  validation error is reported to Optuna after every epoch (read from metrics.jsonl); when the pruner says the trial
  is behind, the process gets SIGTERM, saves `last.pt` and the trial is marked pruned (`pruned.json`).
- The study lives in `<sweep dir>/study.journal` (Optuna's journal file: no database). Re-running the same command
  continues it up to N finished trials; a trial that was running when the sweep stopped (Ctrl-C, a crash, a lost
  node) is resumed from its own directory's `last.pt` with the same values.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nin_cli.errors import ConfigError, Interrupted
from nin_cli.files import atomic_write
from nin_cli.runs import write_json
from nin_cli.sweep import (
    PRUNED,
    JobRow,
    job_dirs,
    plan_sweep,
    print_plan,
    raise_failed,
    record_failure,
    show_summary,
)

STUDY = "study.journal"
RESULTS = "optimization_results.yaml"
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


def open_study(sweep_dir: Path, sampler: Any, pruner: Any) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # nin prints its own line per trial
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / STUDY)))
    return optuna.create_study(storage=storage, study_name="nin", direction="minimize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def continue_interrupted(study: Any) -> None:
    """A trial left running by a stopped sweep is closed as failed and asked again with the same values and the
    same directory, so its `nin train` resumes from that directory's last.pt."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"run_dir": trial.user_attrs.get("run_dir", str(trial.number)),
                                                      "continues": trial.number})


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
    path = run_dir / "metrics.jsonl"
    found: list[tuple[int, float]] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            break
        if row.get("epoch", 0) > after and row.get("val_error") is not None:
            found.append((row["epoch"], row["val_error"]))
    return found


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

    command = [sys.executable, "-m", "nin_cli", "train", *overrides, f"hydra.run.dir={run_dir}",
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
    except KeyboardInterrupt:  # the trial got the same Ctrl-C: it saves; the next run of the sweep resumes it
        proc.wait()
        raise Interrupted(f"stopped during trial {trial.number}; re-run the same command to resume it", 130) from None
    pump.join()
    finished = code == 0 or (pruned_at is not None and (run_dir / "summary.json").exists())
    if pruned_at is not None and not finished:  # 143, or killed (-15) while it was saving after its last step
        write_json(run_dir / PRUNED, {"epoch": pruned_at, "best_val_error": best})
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    if finished:  # also a run that ended its last epoch as the pruner's SIGTERM arrived
        summary = json.loads((run_dir / "summary.json").read_text())
        value = summary.get("best_val_error")
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


def run_search(overrides: list[str], trials: int, sampler: Any, pruner: Any, dry_run: bool = False) -> list[JobRow]:
    """Plan and check the candidates, then run trials until the study in the sweep directory has `trials`
    finished ones; summary as `nin sweep` writes it (pruned trials marked)."""
    plan = plan_sweep(overrides, sampled=True)
    space, fixed = search_space(plan.lines)
    if dry_run:
        print_plan(plan)
        return []
    study = open_study(plan.sweep_dir, sampler, pruner)
    continue_interrupted(study)
    rows: list[JobRow] = []
    try:
        while finished_trials(study) < trials:
            trial = study.ask(space)
            run_dir = plan.sweep_dir / trial.user_attrs.get("run_dir", str(trial.number))
            trial.set_user_attr("run_dir", run_dir.name)
            values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
            print(f"trial {trial.number} ({finished_trials(study) + 1} of {trials}): {values}", flush=True)
            state = run_trial(study, trial, trial_overrides(fixed, trial.params), run_dir)
            print(f"trial {trial.number}: {state}", flush=True)
    finally:  # also after Ctrl-C: what finished so far
        write_results(study, plan.sweep_dir)
        if job_dirs(plan.sweep_dir):
            rows = show_summary(plan.sweep_dir)
    raise_failed(rows)
    return rows
