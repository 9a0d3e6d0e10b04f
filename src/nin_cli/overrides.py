"""The command line → config edge: where Hydra composes `conf/` with the overrides, and everything nin checks
around that. config.py holds the schema and its validation (no Hydra); this module owns the rest:

- `config_dir`, `hydra_session`, `compose_hydra`: the one way to compose (every command: `compose`/`load_config`
  here, `hydra_app.hydra_run` and `hydra_multirun`, `nin sweep`'s planning), with every exception Hydra, OmegaConf
  and YAML raise turned into one ConfigError line (`hydra_error`).
- `check_overrides`: the command line's overrides (sizes, nesting, sweep syntax where a run is asked for).
- `check_replayed_overrides`, `stored_config_overrides`: overrides and configs read back from a run directory or a
  checkpoint, untrusted: only nin's own schema keys and existing group options, never a target or a search path.
- `schema_overrides`: every schema key settable without a '+'. `completions`: shell completion.
- `checkpoint_config`: a trained model's stored config with overrides on top (eval, export, cam).
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from nin_cli.config import GROUPS, NinConfig, to_config, to_dict, unknown_key
from nin_cli.errors import ConfigError, DataError, UnknownKeyError, UnsafeFileError
from nin_cli.files import one_line

HYDRA_VERSION_BASE = "1.3"


def config_dir() -> Path:
    """$NIN_CONFIG_DIR when set (it replaces all of conf/); else the package's own nin_cli/conf (a wheel ships
    conf/ there); else conf/ at the top of the checkout (an editable install runs from src/nin_cli/)."""
    env = os.environ.get("NIN_CONFIG_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if packaged.is_dir() else here.parents[1] / "conf"


CONFIG_PATH_ENV = "NIN_CONFIG_PATH"


def user_config_dirs() -> list[Path]:
    """$NIN_CONFIG_PATH (folders separated by ':'): the user's own presets and group options, laid out like conf/
    (experiment/NAME.yaml, model/NAME.yaml, ...), searched after conf/. Only the environment names them: nothing
    read from a run directory adds one, so a replayed run may name only options the user makes available again."""
    dirs = []
    for part in filter(None, os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep)):
        path = Path(part).expanduser().absolute()
        if not path.is_dir():
            raise ConfigError(f"{CONFIG_PATH_ENV}: {part} is not a directory; give folders laid out like conf/ "
                              "(experiment/NAME.yaml, model/NAME.yaml, ...)")
        if set("'\"\\,[]{}") & set(str(path)):  # they would be syntax in Hydra's override grammar
            raise ConfigError(f"{CONFIG_PATH_ENV}: {part}: a folder name with quotes, commas or brackets; move it")
        dirs.append(path)
    return dirs


def _search_path() -> list[str]:
    """Hydra's own way to add config folders, as one hydra override (never a task override: Hydra keeps it out of
    the run's .hydra/overrides.yaml, so a run directory never carries it)."""
    dirs = user_config_dirs()
    return [f"hydra.searchpath=[{','.join(repr(f'file://{d}') for d in dirs)}]"] if dirs else []


def config_sources(choices: dict) -> dict:
    """Where each group option of a run came from, for provenance.json: every chosen option found in a user config
    folder and not in conf/ (its file and sha256), and the folders searched. Empty without $NIN_CONFIG_PATH."""
    import hashlib

    dirs = user_config_dirs()
    if not dirs:
        return {}
    options = {}
    for group, choice in choices.items():
        name = f"{group}/{choice}.yaml"
        if not isinstance(choice, str) or (config_dir() / name).is_file():
            continue
        for folder in dirs:
            if (folder / name).is_file():
                digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
                options[group] = {"option": choice, "file": str(folder / name), "sha256": digest}
                break
    return {"config_path": [str(d) for d in dirs], "options": options}


@contextmanager
def hydra_session() -> Iterator[Any]:
    """Hydra initialised on `config_dir()`; yields Hydra's own object (`compose_config`, `config_loader`)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(config_dir()), version_base=HYDRA_VERSION_BASE, job_name="train"):
        yield GlobalHydra.instance().hydra


def compose_hydra(hydra: Any, overrides: list[str], run_mode: str = "run", with_log_configuration: bool = False,
                  from_shell: bool = True) -> Any:
    """The one composition: `conf/config.yaml` with `overrides` (as given: callers pass `schema_overrides`), with
    `hydra` in it; any error is one ConfigError line (exit 2), a broken YAML file under conf/ included."""
    import yaml
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    mode = RunMode.MULTIRUN if run_mode == "multirun" else RunMode.RUN
    try:
        return hydra.compose_config(config_name="config", overrides=[*overrides, *_search_path()], run_mode=mode,
                                    from_shell=from_shell, with_log_configuration=with_log_configuration)
    except (HydraException, OmegaConfBaseException, ValueError, yaml.YAMLError, OSError, RecursionError) as err:
        raise hydra_error(err) from None


def group_options(group: str) -> list[str]:
    """A group's options in conf/ and in the user's config folders ($NIN_CONFIG_PATH)."""
    roots = [config_dir() / group, *(d / group for d in user_config_dirs())]
    return sorted({p.stem for r in roots for p in r.glob("*.yaml")}) + sorted(
        {f"{d.name}/{p.stem}" for r in roots for d in r.glob("*/") for p in d.glob("*.yaml")}
    )


def schema_keys(cls: type = NinConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key of the schema (lists of blocks are set whole: model.blocks)."""
    keys = []
    for f in fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        keys += schema_keys(tp, f"{prefix}{f.name}.") if is_dataclass(tp) else [prefix + f.name]
    return keys


def completions(args: list[str], incomplete: str) -> list[str]:
    """Shell completion of an override: config groups and schema keys (`dataset=`, `trainer.epochs=`), then a
    group's options. bash splits words at '=' (the word before the one being completed is then "="); zsh and fish
    keep `dataset=ci` whole."""
    if len(args) >= 2 and args[-1] == "=" and args[-2] in GROUPS:
        return [o for o in group_options(args[-2]) if o.startswith(incomplete)]
    key, eq, partial = incomplete.partition("=")
    if eq:
        return [f"{key}={o}" for o in group_options(key) if o.startswith(partial)] if key in GROUPS else []
    keys = dict.fromkeys([f"{g}=" for g in GROUPS] + [f"{k}=" for k in schema_keys()])
    return [k for k in keys if k.startswith(incomplete)]


def hydra_error(err: Exception) -> ConfigError:
    """Turn Hydra's multi-line composition errors into one line naming the key, value and what is allowed."""
    import yaml

    if isinstance(err, yaml.YAMLError | UnicodeDecodeError):
        return _broken_config_file(err)
    if isinstance(err, RecursionError):
        return ConfigError("bad override or config: nested too deeply to read")
    from hydra.errors import HydraException, MissingConfigException

    if isinstance(err, OSError) and not isinstance(err, HydraException):  # Hydra looked up a name no file can have
        return ConfigError(f"bad override or config: Hydra could not look it up as a config file "
                           f"({err.strerror or type(err).__name__})")
    if isinstance(err, MissingConfigException) and "/" in (err.missing_cfg_file or ""):
        return _no_such_option(*err.missing_cfg_file.rsplit("/", 1))
    # The rest arrive as a bare ConfigCompositionException (hydra-core 1.3.8): no attribute holds the override's
    # key or what went wrong, so its message is the only source. tests/test_hostile_input.py pins each case.
    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)  # a group option inside a defaults list
    if missing:
        return _no_such_option(*missing.groups())
    override = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text)
    if override:
        key = override.group(1)
        parent, _, leaf = key.rpartition(".")
        known = _known_keys(parent)
        if known is not None:
            return unknown_key(parent, leaf, known)
        return _unknown_path(key)
    added = re.search(r"Multiple values for (\S+)\. To override a value use 'override \S+: (\S+)'", text)
    if added:
        group, option = added.groups()
        return ConfigError(f"'+{group}={option}': {group} is already in the defaults list; write {group}={option} "
                           "(no '+')")
    if "Ambiguous value" in text or "add --multirun" in text:
        return ConfigError("a comma-separated value asks for several runs: use `nin sweep` for that")
    cause = err.__cause__ or err.__context__
    detail = one_line(str(cause)) if cause is not None and str(cause) else one_line(text)
    return ConfigError(f"bad override or config: {detail.split(' Config search path:')[0][:300]}")


def _no_such_option(group: str, option: str) -> ConfigError:
    options = group_options(group)
    near = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean '{group}={near[0]}'?)" if near else ""
    return ConfigError(f"{group}={option}: no such option{hint}; choose one of: {', '.join(options)}")


def _unknown_path(key: str) -> UnknownKeyError:
    """An unknown dotted key whose first wrong part is not the last ('trainr.epochs'): correct that part."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        known = _known_keys(".".join(parts[:i]))
        if known is None:
            break
        if part not in known:
            near = difflib.get_close_matches(part, known, n=1, cutoff=0.6)
            if near:
                fixed = ".".join([*parts[:i], near[0], *parts[i + 1:]])
                return UnknownKeyError(f"unknown config key '{key}' (did you mean '{fixed}'?)")
            break
    return UnknownKeyError(f"unknown config key '{key}'")


def _broken_config_file(err: Exception) -> ConfigError:
    """A YAML or encoding error while composing: Hydra does not say in which file, so find it and say where."""
    import yaml
    from omegaconf import OmegaConf

    def signature(e: Exception) -> tuple:
        mark = getattr(e, "problem_mark", None)
        return (type(e), getattr(e, "problem", str(e)), mark and (mark.line, mark.column))

    found: list[ConfigError] = []
    for path in sorted(config_dir().rglob("*.yaml")):  # the file that fails the same way, else the first broken
        try:
            OmegaConf.load(path)
        except (yaml.YAMLError, UnicodeDecodeError, ValueError) as bad:
            mark = getattr(bad, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = one_line(getattr(bad, "problem", None) or str(bad))[:160]
            found.insert(0 if signature(bad) == signature(err) else len(found),
                         ConfigError(f"{path}: invalid YAML: {problem}{where}"))
    return found[0] if found else ConfigError(f"invalid YAML in an override: {one_line(str(err))[:200]}")


def _field_type(dotted: str) -> Any:
    """The schema's type at a dotted path (None when the path is not in the schema)."""
    tp: Any = NinConfig
    for part in dotted.split("."):
        if typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        if not is_dataclass(tp) or part not in typing.get_type_hints(tp):
            return None
        tp = typing.get_type_hints(tp)[part]
    return tp


def _known_keys(dotted: str) -> list[str] | None:
    cls: Any = NinConfig
    for part in filter(None, dotted.split(".")):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        tp = hints[part]
        if typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        cls = tp
    return [f.name for f in fields(cls)] if is_dataclass(cls) else None


_SWEEP_VALUE = re.compile(r"^[^=]+=(?:[^\[\]{}()'\"]*,|.*\b(range|choice|interval|glob)\()")


MAX_KEY_CHARS = 200  # a dotted key; longer ones are no key of nin's (and Hydra would look for them as files)
MAX_NESTING = 32  # brackets and braces inside one override value (the deepest config, model.blocks, needs 3)


def _nesting(value: str) -> int:
    depth = deepest = 0
    for char in value:
        if char in "[{(":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]})":
            depth -= 1
    return deepest


def check_overrides(overrides: list[str], allow_sweep: bool = False) -> None:
    for item in overrides:
        key = item.split("=", 1)[0]
        if len(key) > MAX_KEY_CHARS:
            raise ConfigError(f"bad override: a key of {len(key):,} characters ('{key[:40]}...'); keys are dotted "
                              "names such as trainer.epochs")
        if _nesting(item) > MAX_NESTING:
            raise ConfigError(f"bad override '{item[:40]}...': nested {_nesting(item):,} levels deep (at most "
                              f"{MAX_NESTING})")
        if item in ("-m", "--multirun"):
            raise ConfigError(f"'{item}' is Hydra's multirun: use `nin sweep OVERRIDES...` for several runs")
        if item in ("--cfg", "-c", "--info", "-i") or item.startswith(("--cfg=", "--info=")):
            raise ConfigError(f"'{item}' is Hydra's config printer: use `nin info OVERRIDES...`, which prints the "
                              "resolved config (its `--json` gives parameters and FLOPs)")
        if item.startswith("-"):
            raise ConfigError(f"unknown option '{item}'; overrides look like key=value (see `nin --help`)")
        if "=" not in item:
            raise ConfigError(f"'{item}' is not an override: expected key=value, e.g. trainer.epochs=10")
        if not allow_sweep and _SWEEP_VALUE.match(item):
            raise ConfigError(f"'{item}' asks for several runs: use `nin sweep {item}` for that")


def _mentions_target(value: Any) -> bool:
    """Whether a parsed override value carries Hydra's `_target_` anywhere (a key or text of a nested value)."""
    if isinstance(value, dict):
        return any("_target_" in str(k) or _mentions_target(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_mentions_target(v) for v in value)
    return "_target_" in str(value)


def check_replayed_overrides(items: list[Any], source: Path) -> list[str]:
    """The overrides a run directory asks to replay (its `.hydra/overrides.yaml`), checked as untrusted input.

    Hydra instantiates `hydra.callbacks.*._target_` and any `_target_` it is handed, so a shared run directory
    could run code through them. A replayed override may set only nin's own schema keys and pick a group option
    that exists in `conf/`; anything under `hydra`, any `_target_`, or any unknown key is refused (exit 4) before
    anything is composed, instantiated or created. A file that is not a list of overrides is damage (exit 3)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise DataError(f"{source}: not a list of overrides; repair or remove it to resume this run")
    try:
        parsed = OverridesParser.create().parse_overrides(items)
    except (HydraException, RecursionError) as err:
        raise DataError(f"{source}: unreadable override ({one_line(str(err))[:160]}); repair or remove it") from None
    for o in parsed:
        key = o.key_or_group
        value = o.value() if not o.is_delete() else None
        parent = key.rpartition(".")[0]
        if key in GROUPS:
            allowed = o.package is None and isinstance(value, str) and value in group_options(key)
        else:
            mapping = bool(parent) and typing.get_origin(_field_type(parent)) is dict  # init_std_overrides.conv1
            allowed = _field_type(key) is not None or mapping
        if key in GROUPS and not allowed and isinstance(value, str) and not _mentions_target(value):
            raise UnsafeFileError(f"{source}: refused override '{one_line(o.input_line)[:120]}': no such {key} "
                                  f"option in conf/ or ${CONFIG_PATH_ENV} (set it to the folder that has it: a run "
                                  "directory never adds one); nothing was run")
        if key.split(".")[0].split("/")[0] == "hydra" or "_target_" in key or _mentions_target(value) or not allowed:
            raise UnsafeFileError(f"{source}: refused override '{one_line(o.input_line)[:120]}': a run directory may "
                                  "only set nin's own config keys (nothing under hydra, no _target_); nothing was run")
    return list(items)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _grammar(value: Any, source: Path) -> str:
    """A validated config value in Hydra's override grammar (strings quoted, so nothing in them is syntax)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)  # Hydra: only \ before a quote
        return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"
    if isinstance(value, list):
        return "[" + ",".join(_grammar(v, source) for v in value) + "]"
    if isinstance(value, dict):
        bad = [k for k in value if not _NAME.fullmatch(str(k))]
        if bad:
            raise DataError(f"{source}: its stored config has the key {str(bad[0])[:40]!r}, not a name")
        return "{" + ",".join(f"{k}:{_grammar(v, source)}" for k, v in value.items()) + "}"
    raise DataError(f"{source}: its stored config holds a {type(value).__name__}")


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (str(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def stored_config_overrides(stored: Any, source: Path) -> list[str]:
    """The config a checkpoint stores, as overrides that compose it again: `resume=CKPT` of a checkpoint outside a
    run directory continues with the config it was trained with. The stored config is untrusted input: anything
    for Hydra (a `hydra` key, `_target_`, an interpolation) is refused (exit 4), anything the schema refuses is a
    checkpoint that is not what it claims (exit 3); only validated values are written back, quoted."""
    if not isinstance(stored, dict):
        raise DataError(f"{source}: a nin checkpoint without its config")
    if "hydra" in stored or any("_target_" in s or "${" in s for s in _strings(stored)):
        raise UnsafeFileError(f"{source}: refused, its stored config sets Hydra keys, _target_ or an interpolation "
                              "(only nin's own config values may be stored); nothing was run")
    try:
        cfg = to_config({k: v for k, v in stored.items() if k != "resume"})
    except ConfigError as err:
        raise DataError(f"{source}: its stored config is not valid for this nin ({err})") from None
    items = [f"experiment={cfg.experiment}"] if cfg.experiment in group_options("experiment") else []
    values = to_dict(cfg)
    for group in ("dataset", "model", "head", "optim", "schedule", "trainer"):
        for key, value in values[group].items():
            if isinstance(value, dict):  # a mapping given as an override is merged into the group's: clear it first
                items.append(f"{group}.{key}=null")
            items.append(f"{group}.{key}={_grammar(value, source)}")
    return items


def _quote_home(item: str) -> str:
    """Hydra's grammar has no '~': quote a home path (dataset.root=~/data, which the shell leaves as is)."""
    key, sep, value = item.partition("=")
    return f"{key}='{value}'" if sep and value.startswith("~") and not set("'\"\\") & set(value) else item


def schema_overrides(overrides: list[str]) -> list[str]:
    """`group.key=value` for a key the schema knows but the group's YAML may leave out (trainer.num_threads) becomes
    Hydra's add-or-override `++group.key=value`, so every documented key is settable without a '+'."""
    out = []
    for item in map(_quote_home, overrides):
        key = item.split("=", 1)[0]
        parent, _, leaf = key.rpartition(".")
        known = _known_keys(parent) if parent and not key.startswith(("+", "~", "hydra.")) else None
        mapping = known is None and parent and typing.get_origin(_field_type(parent)) is dict  # init_std_overrides.x
        out.append(f"++{item}" if (known is not None and leaf in known) or mapping else item)
    return out


def compose(overrides: list[str], run_mode: str = "run", with_hydra: bool = False) -> Any:
    """Compose `conf/config.yaml` with the overrides through Hydra; return the DictConfig (`with_hydra`: with its
    `hydra` node)."""
    from omegaconf import open_dict

    check_overrides(overrides, allow_sweep=run_mode == "multirun")
    with hydra_session() as hydra:
        cfg = compose_hydra(hydra, schema_overrides(overrides), run_mode, from_shell=False)  # as hydra.compose
    if not with_hydra:
        with open_dict(cfg):  # as hydra.compose(return_hydra_config=False) does
            del cfg["hydra"]
    return cfg


def load_config(overrides: list[str]) -> NinConfig:
    return to_config(compose(overrides))


def checkpoint_config(stored: dict, overrides: list[str]) -> Any:
    """The checkpoint's resolved config with Hydra-grammar overrides on top: `group=option` swaps in that option
    from conf/, `key=value` / `+key=value` set a value. Validated like `nin train`'s (exit 2)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    check_overrides(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except (HydraException, RecursionError) as err:
        raise ConfigError(f"bad override: {one_line(err, 300) or 'nested too deeply'}") from None
    for o in parsed:
        if o.is_delete():
            raise ConfigError(f"'{o.input_line}': removing keys does not apply to a trained model's config")
    node = copy.deepcopy(stored)
    groups = [o for o in parsed if o.key_or_group in GROUPS]
    if any(o.key_or_group == "experiment" for o in groups):
        raise ConfigError("experiment=... describes a training run; override the keys to change instead")
    if groups:
        composed = OmegaConf.to_container(compose([o.input_line for o in groups]), resolve=True)
        node.update({o.key_or_group: composed[o.key_or_group] for o in groups})
    tree = OmegaConf.create(node)
    for o in parsed:
        if o.key_or_group not in GROUPS:
            OmegaConf.update(tree, o.key_or_group, o.value(), merge=False, force_add=True)
    return to_config(OmegaConf.to_container(tree))
