"""Every `nin` command in README.md's ```bash blocks can be copied and pasted (README, "Development").

The convention, for whoever edits the README:
- A line of a ```bash block that starts with `nin ` is a command (a trailing backslash continues it on the next
  line), also after environment assignments (`NIN_CONFIG_PATH=my_presets nin info ...`: set while it runs). A line
  that starts with `mkdir ` runs through bash in the same directory (it makes the files the next commands use).
  Other lines are not run: `make X` must name a Makefile target; `pip`, `torchrun`, `sbatch`, `tar` and comments
  are left alone.
- A command whose comment says `needs:` (`# needs: network`, `# needs: CIFAR-10, a GPU`, `# needs: time`, ...) or
  that holds a placeholder in capitals (CKPT, DIR, RUN_A, IMAGE...) is checked, not run: its subcommand and options
  exist, and its overrides validate against the schema (`load_config`, the check `nin train` makes before torch is
  imported; a grid for `nin sweep` is planned with --dry-run; the keys of a search or of a checkpoint's overrides
  must be schema keys or config groups).
- Every other command runs for real, in README order, in one empty directory, and must exit 0: it may need no data,
  no network and no more than seconds. `nin train` gets one epoch of two steps on one thread appended (later
  overrides win), so the quick start's commands run as written, only shorter.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from conftest import REPO

README = REPO / "README.md"
CHEAP_TRAIN = ["trainer.epochs=1", "trainer.max_steps_per_epoch=2", "trainer.num_threads=1", "trainer.progress=none"]
PLACEHOLDER = re.compile(r"(?<![a-z0-9])[A-Z][A-Z0-9_]+(?![a-z0-9])|\.\.\.")


def bash_lines(text: str) -> list[str]:
    """The logical lines of every ```bash block (continuations joined)."""
    lines, inside, pending = [], False, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            inside = raw.strip() == "```bash"
            continue
        if not inside:
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return lines


def split_comment(line: str) -> tuple[list[str], str]:
    """The words of a command and its comment: a `#` outside quotes that starts a word, as bash reads it."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return shlex.split(line[:i]), line[i:]
    return shlex.split(line), ""


ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def commands() -> list[tuple[list[str], bool]]:
    """(words, runs) for every `nin` command of the README, in order, environment assignments first; a `mkdir`
    line as ["bash", "-c", line]."""
    found = []
    for line in bash_lines(README.read_text()):
        words, comment = split_comment(line)
        if words[:1] == ["mkdir"]:
            found.append((["bash", "-c", line], "needs:" not in comment))
            continue
        env = [w for w in words if ASSIGNMENT.match(w)]
        command = words[len(env):] if words[:len(env)] == env else []
        if command[:1] != ["nin"]:
            continue
        check_only = "needs:" in comment or any(PLACEHOLDER.search(w) for w in command[1:])
        found.append((env + command, not check_only))
    return found


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    env = [w for w in words if ASSIGNMENT.match(w)]
    return dict(w.split("=", 1) for w in env), words[len(env):]


def make_targets() -> list[str]:
    targets = []
    for line in bash_lines(README.read_text()):
        words, _ = split_comment(line)
        if words[:1] == ["make"]:
            targets += [w for w in words[1:] if "=" not in w]
    return targets


def overrides_of(words: list[str]) -> list[str]:
    return [w for w in words[2:] if "=" in w and not w.startswith("-")]


def command_options() -> dict[str, set[str]]:
    """Every subcommand of `nin` and the options it takes."""
    import typer.main

    from nin_cli.cli import app

    group = typer.main.get_command(app)
    return {name: {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
            for name, cmd in group.commands.items()}


def test_the_readme_has_commands_to_run_and_to_check():
    found = commands()
    runs = [" ".join(split_env(w)[1]) for w, run in found if run and w[0] != "bash"]
    assert len(found) >= 40 and len(runs) >= 5, runs
    assert runs[0].startswith("nin train experiment=demo_digits")  # the quick start needs no data
    assert "nin train experiment=paper_cifar10" in {" ".join(w) for w, _ in found}  # then the paper recipe
    assert any(w[0] == "bash" for w, run in found if run)  # the presets example makes its folder


def test_make_targets_in_the_readme_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in make_targets():
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"make {target}: no such target"


def test_every_command_names_a_subcommand_and_options_that_exist():
    options = command_options()
    for words, _ in commands():
        words = split_env(words)[1]
        if words[0] == "bash":
            continue
        assert words[1] in options, f"{' '.join(words)}: no subcommand {words[1]!r}"
        for word in words[2:]:
            if word.startswith("-"):
                assert word.split("=")[0] in options[words[1]], f"{' '.join(words)}: no option {word}"


def known_key(key: str) -> bool:
    from nin_cli.config import GROUPS
    from nin_cli.overrides import schema_keys

    key = key.lstrip("+")
    return key.startswith(("hydra.", "hydra/")) or key in (*GROUPS, "sweep") or key in schema_keys() or any(
        key.startswith(k + ".") for k in schema_keys())


def test_commands_that_are_only_checked_validate_their_overrides(nin):
    from nin_cli.overrides import load_config

    for words, runs in commands():
        words = split_env(words)[1]
        if runs or words[0] == "bash":
            continue
        shown, sub, overrides = " ".join(words), words[1], overrides_of(words)
        if sub in ("train", "info", "data", "bench"):
            load_config([o for o in overrides if not PLACEHOLDER.search(o)])  # raises ConfigError: exit 2
        elif sub == "sweep" and overrides and "--trials" not in words:
            result = nin("sweep", *overrides, "--dry-run")
            assert result.code == 0, f"{shown}: {result.err}"
        else:
            for item in overrides:
                assert known_key(item.split("=")[0]), f"{shown}: unknown key in {item}"


def test_commands_that_need_nothing_run(nin, tmp_path, monkeypatch):
    ran = []
    for words, runs in commands():
        if not runs:
            continue
        if words[0] == "bash":
            subprocess.run(words, cwd=tmp_path, check=True, timeout=30)
            continue
        env, words = split_env(words)
        extra = CHEAP_TRAIN if words[1] == "train" else []
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            result = nin(*words[1:], *extra)
        assert result.code == 0, f"{' '.join(words)}: exit {result.code}: {result.err[-2000:]}"
        ran.append(words[1])
    assert "train" in ran and "eval" in ran and (tmp_path / "outputs" / "mine" / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_missing_data_exits_3_and_leaves_no_run_directory(nin, tmp_path, dataset):
    run = tmp_path / "outputs" / "run"
    result = nin("train", f"dataset={dataset}", f"dataset.root={tmp_path / 'nowhere'}", f"hydra.run.dir={run}")
    assert result.code == 3, result.err
    assert "not found under" in result.err_lines[-1] and "--download" in result.err_lines[-1]
    assert not run.exists()


def test_missing_data_in_an_existing_run_directory_keeps_it(nin, tmp_path):
    run = tmp_path / "run"
    (run / "notes").mkdir(parents=True)  # the user's: never removed
    result = nin("train", "dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}", f"hydra.run.dir={run}")
    assert result.code == 3, result.err
    assert (run / "notes").is_dir() and (run / "train.log").is_file()
