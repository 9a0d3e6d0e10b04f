"""`nin sweep`: many runs through Hydra's own sweeper and launcher plugins, and the sweep's summary.

`run_sweep(overrides)` plans first: compose in MULTIRUN mode, list the jobs (the whole grid for the basic sweeper;
for sampling sweepers such as Optuna one job per candidate value), and validate every job's config. A bad key or
group option is wrong for the whole sweep: exit 2 before anything runs. A bad value fails only the jobs that carry
it. Then `hydra_app.hydra_multirun` hands the jobs to the configured sweeper and launcher with `sweep_job` as the
task. Each job is an ordinary run directory `<hydra.sweep.dir>/<hydra.sweep.subdir>/`; a job that fails leaves
`outcome.json` (status failed, one-line reason, exit code: runs.write_outcome); the others run on. Re-running the
same sweep into the same directory skips finished jobs (summary.json) and resumes the others (fit continues from
checkpoints/last.pt).

`write_summary(sweep_dir)` reads every job directory back into summary.csv, summary.md and a rich table. Jobs that
differ only in `trainer.seed` are grouped (`seed_groups`): mean ± std and n over the finished seeds of every
numeric summary.json metric (results.mean_std: the paper table's statistics), in summary_seeds.csv, a second table
and a section of summary.md. Every job directory is read through results.py, the one reader of run directories.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import re
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nin_cli.config import NinConfig, to_config, to_dict
from nin_cli.errors import (
    ConfigError,
    DataError,
    DiskFullError,
    DivergedError,
    Interrupted,
    NinError,
    UnknownKeyError,
    UnsafeFileError,
    full_disk,
)
from nin_cli.files import atomic_write, one_line, open_append, refuse_unsafe_tree, require_utf8_path
from nin_cli.hydra_app import hydra_multirun, hydra_private
from nin_cli.overrides import check_overrides, compose_hydra, hydra_error, hydra_session, schema_overrides
from nin_cli.results import (
    NOT_SETTINGS,
    SEED_KEY,
    format_error,
    group_by_seed,
    job_dirs,
    mean_std,
    numeric_metrics,
    override_values,
    read_metrics,
    read_outcome,
    read_overrides,
    read_summary,
    read_yaml,
)
from nin_cli.runs import clear_outcome, output_dir_problem, run_dir_lock, write_outcome

log = logging.getLogger("nin")

INSTALL = "pip install -e '.[sweep]'"
# The plugins the `sweep` extra brings: group -> option -> the package that registers it.
PLUGINS = {"hydra/launcher": {"joblib": "hydra-joblib-launcher", "submitit_local": "hydra-submitit-launcher",
                              "submitit_slurm": "hydra-submitit-launcher"}}
# hydra-optuna-sweeper 1.3.0 (its last release) pins optuna<3 and sqlalchemy<2; search.py drives current Optuna.
OPTUNA_MOVED = "hydra/sweeper=optuna is replaced by `nin sweep --trials N` (current Optuna, pruning, resumable studies)"
ERRORS = {2: ConfigError, 3: DataError, 4: UnsafeFileError, 5: DivergedError}


@dataclass
class Plan:
    overrides: list[str]  # for hydra_multirun: the user's, with hydra.sweep.dir pinned to one absolute path
    sweep_dir: Path
    sweeper: str
    launcher: str
    jobs: list[list[str]]  # every job's overrides (basic sweeper), or one per candidate value (sampling sweepers)
    lines: list[str] = field(default_factory=list)  # the sweep's overrides, ready sweeps' params included
    invalid: dict[int, str] = field(default_factory=dict)  # index in jobs -> why that job's config is invalid


@dataclass
class JobRow:
    job: str  # the job directory, relative to the sweep directory
    overrides: list[str]
    status: str  # done | failed | unfinished
    best_val_error: float | None = None
    test_error: float | None = None
    params: int | None = None
    wall_time_s: float | None = None
    reason: str = ""
    exit_code: int | None = None
    swept: str = ""  # only the overrides that vary across the sweep's jobs
    seed: str = ""  # trainer.seed: the job's override, else its summary.json's
    metrics: dict[str, float] = field(default_factory=dict)  # every numeric summary.json value but the seed


class _StopSweep(KeyboardInterrupt):
    """Carries a job's Interrupted (Ctrl-C / SIGTERM, checkpoint written) or a full disk past Hydra's run_job, which
    records any Exception as one failed job and launches the next. Plain args (message, exit code, whether the disk
    is full) so it pickles."""


# --------------------------------------------------------------------------------------------------- planning


def _check_plugins(overrides: list[str], loader: Any) -> None:
    """`hydra/launcher=joblib` and friends without their plugin installed: say what to install (exit 2)."""
    for item in overrides:
        group, _, option = item.lstrip("+").partition("=")
        if (group, option) == ("hydra/sweeper", "optuna"):
            raise ConfigError(OPTUNA_MOVED)
        if group not in PLUGINS:
            continue
        available = loader.get_group_options(group)
        if option in available:
            continue
        if option in PLUGINS[group]:
            raise ConfigError(f"{group}={option} needs the {PLUGINS[group][option]} plugin: {INSTALL}")
        raise ConfigError(f"{group}={option}: no such option; choose one of: {', '.join(available)}")


def _candidates(override: Any) -> list[str]:
    from hydra.core.override_parser.types import IntervalSweep

    value = override.value()
    if isinstance(value, IntervalSweep):  # a sampler may pick anything in between: check both ends
        return [str(value.start), str(value.end)]
    return list(override.sweep_string_iterator())


def sweep_lines(cfg: Any) -> list[str]:
    """The sweep's overrides: ready sweeps' values (+sweep=NAME puts them in hydra.sweeper.params), then the
    command line's (which win)."""
    from omegaconf import OmegaConf

    params = cfg.hydra.sweeper.get("params") or {}
    return [f"{key}={value}" for key, value in params.items()] + OmegaConf.to_container(cfg.hydra.overrides.task)


MAX_JOBS = 10_000  # more is a typo (range(0,1000000)), not a plan: refused before the grid is built or checked


def _check_job_count(parsed: list[Any], sampled: bool) -> None:
    """Refuse (exit 2) a sweep of more than MAX_JOBS jobs (a search: candidate values) before listing them; each
    key's values are counted lazily, at most MAX_JOBS + 1 of them."""
    from itertools import islice

    total = 1
    for override in parsed:
        if not override.is_sweep_override() or not override.is_discrete_sweep():
            continue
        count = sum(1 for _ in islice(override.sweep_string_iterator(), MAX_JOBS + 1))
        total = total + count - 1 if sampled else total * count
        if total > MAX_JOBS:
            what, line = "candidate values" if sampled else "jobs", override.input_line.lstrip("+")
            raise ConfigError(f"'{line}': the sweep would have more than {MAX_JOBS:,} {what}; sweep fewer values")


def _job_overrides(hydra: Any, lines: list[str], sampled: bool) -> list[list[str]]:
    """The grid BasicSweeper will launch; for a sampled search, one job per candidate value of each swept key
    (choices, interval ends), the other keys at their first: enough to validate every value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException


    try:
        parsed = OverridesParser.create(config_loader=hydra.config_loader).parse_overrides(lines)
    except HydraException as err:
        raise hydra_error(err) from None
    if not sampled:
        for override in parsed:
            if override.is_sweep_override() and not override.is_discrete_sweep():
                raise ConfigError(f"'{override.input_line}': the grid sweeper needs a list of values; sample a "
                                  "range with nin sweep --trials N")
    _check_job_count(parsed, sampled)
    if not sampled:
        return hydra_private().BasicSweeper.split_arguments(parsed, None)[0]
    fixed = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in parsed if not o.is_sweep_override()]
    swept = [[f"{o.get_key_element()}={v}" for v in _candidates(o)] for o in parsed if o.is_sweep_override()]
    base = [values[0] for values in swept]
    jobs = [fixed + base]
    for i, values in enumerate(swept):
        jobs += [fixed + base[:i] + [value] + base[i + 1:] for value in values[1:]]
    return jobs


def _checked(cfg: Any) -> NinConfig:
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg, resolve=False)
    node.pop("hydra")  # resolvable only inside a running job; the schema ignores it anyway
    return to_config(OmegaConf.create(node))


def _validate(hydra: Any, plan: Plan) -> dict[int, str]:
    """Compose and check every planned job. A composition error (unknown key or group option, bad syntax) or an
    unknown key stops the sweep (exit 2); a bad value fails only the jobs that carry it, unless every job does."""
    invalid: dict[int, ConfigError] = {}
    for i, job in enumerate(plan.jobs):
        composed = compose_hydra(hydra, job)
        try:
            cfg = _checked(composed)
        except UnknownKeyError:
            raise
        except ConfigError as err:
            invalid[i] = err
            continue
        if plan.sweeper != "basic" and cfg.dataset.val_size == 0:
            raise ConfigError("a search (--trials) minimises the validation error: set dataset.val_size > 0")
    if invalid and len(invalid) == len(plan.jobs):
        raise next(iter(invalid.values()))
    return {i: str(err) for i, err in invalid.items()}


def quoted_path(path: Path) -> str:
    """A path as one quoted value of Hydra's override grammar (commas, quotes, spaces survive)."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pin_sweep_dir(overrides: list[str], sweep_dir: Path) -> list[str]:
    """One absolute sweep directory for every job and process: `${now:}` resolves anew in each process."""
    kept = [o for o in overrides if not o.lstrip("+").startswith("hydra.sweep.dir=")]
    return [*kept, f"hydra.sweep.dir={quoted_path(sweep_dir)}"]


@contextmanager
def guarded_sweep_dir(sweep_dir: Path):
    """A sweep directory checked (no link or special file: exit 4) and locked (one sweep driver at a time: exit 2)
    before any job or study file is written in it."""

    require_utf8_path(sweep_dir, "sweep directory")
    refuse_unsafe_tree(sweep_dir, "sweep directory")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir}: cannot create it ({err.strerror or err}); give a writable "
                          "directory") from None
    with run_dir_lock(sweep_dir, "`nin sweep`"):
        yield


def plan_sweep(overrides: list[str], sampled: bool = False) -> Plan:
    """Compose the sweep, list its jobs (`sampled`: the candidates a search may pick) and validate each one;
    nothing is written."""
    # conf/config.yaml has no `sweep` default: a ready sweep is appended to the defaults list (`+sweep=X`).
    # `-m` out of a Hydra user's habit is harmless: nin sweep is always a multirun.
    overrides = [f"+{o}" if o.startswith("sweep=") else o for o in overrides if o not in ("-m", "--multirun")]
    check_overrides(overrides, allow_sweep=True)
    overrides = schema_overrides(overrides)  # as nin train: trainer.num_threads=2 works without a '+'
    with hydra_session() as hydra:
        _check_plugins(overrides, hydra.config_loader)
        cfg = compose_hydra(hydra, overrides, "multirun")
        choices = cfg.hydra.runtime.choices
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).expanduser().absolute()
        problem = output_dir_problem(sweep_dir)  # found before any job is planned, run or written
        if problem:
            raise ConfigError(f"hydra.sweep.dir={sweep_dir}: {problem}; give a writable directory")
        lines, sweeper = sweep_lines(cfg), "optuna" if sampled else choices["hydra/sweeper"]
        plan = Plan(_pin_sweep_dir(overrides, sweep_dir), sweep_dir, sweeper, choices["hydra/launcher"],
                    _job_overrides(hydra, lines, sweeper != "basic"), lines)
        plan.invalid = _validate(hydra, plan)
    return plan


def print_plan(plan: Plan) -> None:
    what = "jobs" if plan.sweeper == "basic" else "configs checked (the sweeper picks the values)"
    print(f"sweeper {plan.sweeper}, launcher {plan.launcher}, {len(plan.jobs)} {what}, into {plan.sweep_dir}")
    for i, swept in enumerate(swept_overrides(plan.jobs)):
        reason = f"  -> fails: {plan.invalid[i]}" if i in plan.invalid else ""
        print(f"  #{i} {swept}{reason}")


# ------------------------------------------------------------------------------------------------ the sweep


def run_sweep(overrides: list[str], dry_run: bool = False) -> list[JobRow]:
    """Plan, validate, sweep, summarise. Raises the first failed job's error class (its exit code) when any
    job failed, after the summary is written."""

    plan = plan_sweep(overrides)
    if dry_run:
        print_plan(plan)
        return []
    swept = swept_overrides(plan.jobs)
    for i, reason in plan.invalid.items():
        print(f"nin: job #{i} ({swept[i]}) will fail: {reason}", file=sys.stderr)
    rows: list[JobRow] = []
    with guarded_sweep_dir(plan.sweep_dir):
        try:
            hydra_multirun(plan.overrides, sweep_job)
        except _StopSweep as stop:
            message, code, disk = (*stop.args, False)[:3]
            raise (DiskFullError(message) if disk else Interrupted(message, code)) from None
        finally:  # also after Ctrl-C: what finished so far
            if job_dirs(plan.sweep_dir):
                rows = show_summary(plan.sweep_dir)
    raise_failed(rows)
    return rows


def raise_failed(rows: list[JobRow]) -> None:
    """The first failed job's error class (its exit code), once the summary is written."""
    failed = [row for row in rows if row.status == "failed"]
    if failed:
        first = failed[0]
        raise ERRORS.get(first.exit_code or 1, NinError)(
            f"{len(failed)} of {len(rows)} jobs failed; job {first.job} ({first.swept}): {first.reason}")


def sweep_job(cfg: Any) -> float:
    """One job, run by the launcher in this process or another: train (or skip a finished run, or resume) and
    return the best validation error (what a sampling sweeper would minimise). An anticipated failure is recorded
    in outcome.json with its one-line reason and reported as +inf, never raised: the other jobs run on."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    clear_outcome(run_dir)
    try:
        summary = _train_job(cfg, run_dir)
    except Interrupted as err:
        raise _StopSweep(str(err), err.exit_code) from None
    except DiskFullError as err:  # every next job would meet the same disk: the sweep stops here
        raise _stop_for_disk(run_dir, err) from None
    except NinError as err:
        return record_failure(run_dir, str(err), err.exit_code)
    except Exception as err:  # a bug: the traceback goes to the job's train.log, one line to the summary
        if (disk := full_disk(err)) is not None:  # not a bug, and every next job would meet the same disk
            raise _stop_for_disk(run_dir, disk) from None
        try:
            with open_append(run_dir / "train.log") as f:  # never through a link
                f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}][CRASH]\n{traceback.format_exc()}".encode())
        except (OSError, NinError):
            pass  # the one line below still names the error
        return record_failure(run_dir, f"internal error ({type(err).__name__}: {err}); traceback in "
                               f"{run_dir / 'train.log'}", 1)
    value = summary.get("best_val_error")
    return float(value) if value is not None else math.inf


def _train_job(dcfg: Any, run_dir: Path) -> dict:
    cfg = to_config(dcfg)
    previous = _finished_run(cfg, run_dir)
    if previous is not None:
        log.info("%s: finished already (summary.json), skipped", run_dir)
        return previous
    if cfg.trainer.devices > 1:
        return _train_job_distributed(cfg, run_dir)
    from nin_cli.train import train_run  # torch: jobs only

    return train_run(cfg, run_dir)


def _train_job_distributed(cfg: NinConfig, run_dir: Path) -> dict:
    """A job of N processes (a SLURM job with hydra.launcher.gpus_per_node=N and trainer.devices=N): `nin train`'s
    own launch into the job's directory; their outcome comes back as the exit code and summary.json."""
    from hydra.core.hydra_config import HydraConfig

    from nin_cli.distributed import launch  # torch: jobs only

    code = launch(cfg.trainer.devices, cfg.trainer.device, [*HydraConfig.get().overrides.task,
                                                            f"hydra.run.dir={run_dir}"])
    if code in (130, 143):
        raise Interrupted(f"stopped by a signal; saved {run_dir / 'checkpoints' / 'last.pt'}", code)
    if code:
        raise ERRORS.get(code, NinError)(f"its {cfg.trainer.devices} processes exited with code {code}; see "
                                         f"{run_dir / 'train.log'}")
    return read_summary(run_dir)


def _finished_run(cfg: NinConfig, run_dir: Path) -> dict | None:
    """The summary of a finished run of this very config in run_dir (the job is skipped). A run of another config
    there, left by an earlier and different sweep, is refused rather than mixed in or overwritten."""
    try:
        saved = read_yaml(run_dir / "config.yaml")
    except FileNotFoundError:
        return None
    if saved != to_dict(cfg):
        raise ConfigError(f"{run_dir} holds a run of another config (an earlier sweep?); sweep into a new "
                          "hydra.sweep.dir")
    return read_summary(run_dir)


def _stop_for_disk(run_dir: Path, err: DiskFullError) -> _StopSweep:
    """The job recorded as failed where the disk still allows it, and the stop that ends the sweep."""
    try:
        record_failure(run_dir, str(err), err.exit_code)
    except (OSError, NinError):
        pass  # the full disk again: the one line on screen still says it
    return _StopSweep(str(err), err.exit_code, True)


def record_failure(run_dir: Path, reason: str, exit_code: int) -> float:
    reason = one_line(reason)  # one line in the summary, whatever the error said
    log.error("job %s failed: %s", run_dir, reason)
    write_outcome(run_dir, "failed", reason, exit_code)
    return math.inf  # a number, so a sampler records the trial and steers away from what failed


# ---------------------------------------------------------------------------------------------- the summary


def read_job(sweep_dir: Path, run_dir: Path) -> JobRow:
    overrides = read_overrides(run_dir)
    row = JobRow(run_dir.relative_to(sweep_dir).as_posix(), overrides, "unfinished")
    outcome, summary = read_outcome(run_dir), read_summary(run_dir)
    if outcome is not None and outcome.status == "pruned":  # a search stopped it: behind the other trials
        row.status, row.best_val_error, row.reason = "pruned", outcome.best_val_error, outcome.reason
    elif outcome is not None:
        row.status, row.reason, row.exit_code = "failed", outcome.reason, outcome.exit_code or 1
    elif summary is not None:
        row.status, row.metrics = "done", numeric_metrics(summary)
        row.best_val_error, row.test_error = row.metrics.get("best_val_error"), row.metrics.get("test_error")
        row.wall_time_s = row.metrics.get("wall_time_s")
        params = row.metrics.get("params")
        row.params = int(params) if params is not None else None
    else:
        epochs = len(read_metrics(run_dir, running=True))
        row.reason = (f"{epochs} epoch(s) done" if epochs else "stopped mid-epoch" if (
            run_dir / "checkpoints" / "last.pt").exists() else "not started, or stopped before a checkpoint")
        row.reason += "; re-run the sweep to resume"
    seed = override_values(overrides).get(SEED_KEY)
    row.seed = seed if seed is not None else one_line(str((summary or {}).get("seed", "")), 20)
    return row


def swept_overrides(jobs: list[list[str]], swept_keys: frozenset[str] = frozenset()) -> list[str]:
    """Each job's overrides of the swept keys and of those whose value differs between jobs (all its overrides
    when there are none)."""
    values = [dict(o.removeprefix("++").partition("=")[::2] for o in job) for job in jobs]  # ++: schema_overrides
    keys = list(dict.fromkeys(k for v in values for k in v))
    varying = [k for k in keys if k in swept_keys or len({v.get(k) for v in values}) > 1] or keys
    return [" ".join(f"{k}={v[k]}" for k in varying if k in v) for v in values]


def _swept_keys(sweep_dir: Path) -> frozenset[str]:
    """The keys given several values, from multirun.yaml (the basic sweeper's record of the sweep): a sweep
    stopped after its first job still shows what it sweeps."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        hydra = read_yaml(sweep_dir / "multirun.yaml").get("hydra") or {}
        params = hydra["sweeper"].get("params") or {}
        lines = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in hydra["overrides"]["task"]]
        parsed = OverridesParser.create().parse_overrides(lines)
    except (FileNotFoundError, AttributeError, KeyError, TypeError, HydraException):  # none (Optuna), not Hydra's
        return frozenset()
    return frozenset(o.get_key_element().removeprefix("++") for o in parsed if o.is_sweep_override())


# ------------------------------------------------------------------------------------------ seeds aggregated


@dataclass
class SeedGroup:
    """Jobs of a sweep that differ only in trainer.seed; statistics over the finished ones."""

    rows: list[JobRow]
    label: str = ""  # the overrides that tell this group from the others, trainer.seed left out

    @property
    def done(self) -> list[JobRow]:
        return [r for r in self.rows if r.status == "done"]

    @property
    def seeds(self) -> str:
        return " ".join(r.seed for r in self.rows)

    @property
    def jobs(self) -> str:
        return " ".join(r.job for r in self.rows)

    def stats(self, metric: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std, n) of a metric over the finished jobs that report it."""
        values = [float(r.metrics[metric]) for r in self.done if r.metrics.get(metric) is not None]
        return (*mean_std(values), len(values))

    def cell(self, metric: str) -> str:
        """"mean ± std" (2 decimals, as the paper table; seconds to 1), "(n=K)" when fewer jobs report it."""
        mean, std, n = self.stats(metric)
        if metric.endswith("_s") and mean is not None:
            text = f"{mean:.1f}" + ("" if std is None else f" ± {std:.1f}")
        else:
            text = format_error(mean, std) if n else ""
        return f"{text} (n={n})" if n and n != len(self.done) else text

    @property
    def note(self) -> str:
        left = [r for r in self.rows if r.status != "done"]
        if not left:
            return ""
        counts = [(s, sum(r.status == s for r in left)) for s in ("failed", "unfinished")]
        parts = [f"{n} {s}" for s, n in counts if n]
        parts[0] = parts[0].replace(" ", f" of {len(self.rows)} jobs ", 1)
        return ", ".join(parts) + "; not in the statistics"


def seed_groups(rows: list[JobRow], swept_keys: frozenset[str] = frozenset()) -> list[SeedGroup]:
    """The sweep's jobs grouped by their overrides with trainer.seed left out."""
    groups = [SeedGroup(g) for g in group_by_seed(rows, lambda r: override_values(r.overrides))]
    if len(groups) == 1:
        groups[0].label = "all jobs"
        return groups
    shared = [[o for o in g.rows[0].overrides if o.lstrip("+").partition("=")[0] not in NOT_SETTINGS]
              for g in groups]
    for group, label in zip(groups, swept_overrides(shared, swept_keys - NOT_SETTINGS), strict=True):
        group.label = label or "(no overrides)"
    return groups


def group_metrics(groups: list[SeedGroup]) -> list[str]:
    """Every metric some finished job reports, in METRIC_ORDER then alphabetically."""
    found = {k: 0 for g in groups for r in g.done for k in r.metrics}
    return list(numeric_metrics(found))


def _best_group(groups: list[SeedGroup]) -> SeedGroup | None:
    scored = [(g.stats("best_val_error")[0], g) for g in groups]
    scored = [(mean, g) for mean, g in scored if mean is not None]
    return min(scored, key=lambda mg: mg[0])[1] if scored else None


def _seeds_aggregated(groups: list[SeedGroup]) -> bool:
    return any(len(g.rows) > 1 for g in groups)


SEED_COLUMNS = ("overrides", "seeds", "n", "best val err %", "test err %", "wall s")
SEED_METRICS = ("best_val_error", "test_error", "wall_time_s")


def _seed_cells(group: SeedGroup) -> list[str]:
    return [group.label, group.seeds, str(len(group.done)), *(group.cell(m) for m in SEED_METRICS)]


def _csv_text(rows: list[list[Any]]) -> str:
    """CSV of one-line cells (text from a run directory could hold newlines), for `atomic_write`."""
    out = io.StringIO(newline="")
    csv.writer(out).writerows([[one_line(c) if isinstance(c, str) else c for c in row] for row in rows])
    return out.getvalue()


def _write_seeds_csv(path: Path, groups: list[SeedGroup]) -> None:
    """One row per group: mean, sample std and n of every metric, full precision ("" where undefined)."""
    metrics = group_metrics(groups)
    table = [["overrides", "jobs", "seeds", "n_jobs", "n_done",
              *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "n"))]]
    for g in groups:
        cells = []
        for metric in metrics:
            mean, std, n = g.stats(metric)
            cells += ["" if mean is None else mean, "" if std is None else std, n]
        table.append([g.label, g.jobs, g.seeds, len(g.rows), len(g.done), *cells])
    atomic_write(path, _csv_text(table))


def _seeds_markdown(groups: list[SeedGroup]) -> list[str]:
    lines = ["", "## Over seeds", "", "Jobs that differ only in `trainer.seed`: mean ± sample std over the finished "
             "ones (n; the overrides shown leave the seed out); every metric in summary_seeds.csv.", "",
             "| " + " | ".join((*SEED_COLUMNS, "jobs")) + " |", "|" + "---|" * (len(SEED_COLUMNS) + 1)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in (*_seed_cells(g), g.jobs)) + " |" for g in groups]
    notes = [f"- {g.label}: {g.note}" for g in groups if g.note]
    if notes:
        lines += ["", *notes]
    best = _best_group(groups)
    if best is not None:
        lines += ["", f"Best on validation over seeds: `{best.label}` (jobs {best.jobs}), "
                  f"{best.cell('best_val_error')}%."]
    return lines


def _best(rows: list[JobRow]) -> JobRow | None:
    done = [r for r in rows if r.status == "done" and r.best_val_error is not None]
    return min(done, key=lambda r: r.best_val_error) if done else None


COLUMNS = ("job", "overrides", "status", "best val err %", "test err %", "params", "wall s", "note")
NUMERIC = COLUMNS[3:7]


def _cells(row: JobRow) -> list[str]:
    def num(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    swept = re.sub(r"(?<==)-?\d+\.\d{5,}\b", lambda m: format(float(m.group()), ".4g"), row.swept)  # Optuna's
    return [row.job, swept, row.status, num(row.best_val_error, ".2f"), num(row.test_error, ".2f"),
            num(row.params, ","), num(row.wall_time_s, ".1f"), row.reason]


def _write_csv(path: Path, rows: list[JobRow]) -> None:
    """Full-precision numbers, as in each job's summary.json."""
    table = [["job", "overrides", "status", "best_val_error", "test_error", "params", "wall_time_s", "reason"]]
    table += [[r.job, r.swept, r.status, *("" if v is None else v for v in (
        r.best_val_error, r.test_error, r.params, r.wall_time_s)), r.reason] for r in rows]
    atomic_write(path, _csv_text(table))


def _markdown(sweep_dir: Path, rows: list[JobRow]) -> str:
    lines = [f"# Sweep {sweep_dir}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
    best = _best(rows)
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "failed", "unfinished")}
    lines += ["", ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(rows)} jobs."]
    if best is not None:
        lines.append(f"Best on validation: job {best.job} (`{best.swept}`), {best.best_val_error:.2f}%.")
    return "\n".join(lines) + "\n"


def read_sweep(sweep_dir: Path) -> tuple[list[JobRow], list[SeedGroup]]:
    """Every job of the sweep, and the jobs grouped over trainer.seed."""
    sweep_dir = Path(sweep_dir)
    dirs = job_dirs(sweep_dir) if sweep_dir.is_dir() else []
    if not dirs:
        raise ConfigError(f"{sweep_dir}: no sweep jobs there (no */.hydra/overrides.yaml)")
    rows = [read_job(sweep_dir, d) for d in dirs]
    swept_keys = _swept_keys(sweep_dir)
    for row, swept in zip(rows, swept_overrides([r.overrides for r in rows], swept_keys), strict=True):
        row.swept = swept
    return rows, seed_groups(rows, swept_keys)


def write_summary(sweep_dir: Path) -> list[JobRow]:
    return _write_summary(Path(sweep_dir))[0]


def _write_summary(sweep_dir: Path) -> tuple[list[JobRow], list[SeedGroup]]:
    """summary.csv and summary.md (with an "Over seeds" section when some jobs differ only in trainer.seed), and
    summary_seeds.csv (always: one row per group, single jobs too)."""
    refuse_unsafe_tree(sweep_dir, "sweep directory")  # someone else's: its summary.csv may be a link
    rows, groups = read_sweep(sweep_dir)
    _write_csv(sweep_dir / "summary.csv", rows)
    _write_seeds_csv(sweep_dir / "summary_seeds.csv", groups)
    markdown = _markdown(sweep_dir, rows)
    if _seeds_aggregated(groups):
        markdown += "\n".join(_seeds_markdown(groups)) + "\n"
    atomic_write(sweep_dir / "summary.md", markdown)
    return rows, groups


def show_summary(sweep_dir: Path, as_json: bool = False) -> list[JobRow]:
    """Write summary.csv and summary.md in the sweep directory and print the table (`as_json`: one JSON object
    with every job and every seed group on stdout instead)."""
    from rich.console import Console
    from rich.table import Table

    rows, groups = _write_summary(Path(sweep_dir))
    if as_json:
        metrics = sorted({m for group in groups for row in group.rows for m in row.metrics})
        print(json.dumps({"sweep": str(sweep_dir), "jobs": [dataclasses.asdict(row) for row in rows],
                          "seed_groups": [{"label": g.label, "seeds": g.seeds,
                                           **{m: dict(zip(("mean", "std", "n"), g.stats(m), strict=True))
                                              for m in metrics}} for g in groups]}))
        return rows
    best = _best(rows)
    table = Table(title=f"sweep {sweep_dir}")
    for column in COLUMNS[:-1]:  # the notes go below the table: a narrow terminal keeps the numbers readable
        table.add_column(column, justify="right" if column in NUMERIC else "left", overflow="fold")
    for row in rows:
        style = "bold green" if row is best else "red" if row.status == "failed" else None
        table.add_row(*_cells(row)[:-1], style=style)
    console = Console()
    console.print(table)
    for row in rows:
        if row.reason:
            console.print(f"job {row.job} {row.status}: {row.reason}", markup=False, highlight=False)
    if _seeds_aggregated(groups):
        _print_seed_groups(console, groups)
    console.print(f"summary.csv, summary_seeds.csv and summary.md in {sweep_dir}; compare in TensorBoard's HParams "
                  f"tab: tensorboard --logdir {sweep_dir}", markup=False, highlight=False)
    return rows


def _print_seed_groups(console: Any, groups: list[SeedGroup]) -> None:
    from rich.table import Table

    best = _best_group(groups)
    table = Table(title="over seeds (jobs that differ only in trainer.seed): mean ± std, n finished")
    for column in SEED_COLUMNS:
        table.add_column(column, justify="left" if column in ("overrides", "seeds") else "right", overflow="fold")
    for group in groups:
        table.add_row(*_seed_cells(group), style="bold green" if group is best else None)
    console.print(table)
    for group in groups:
        if group.note:
            console.print(f"{group.label}: {group.note}", markup=False, highlight=False)
