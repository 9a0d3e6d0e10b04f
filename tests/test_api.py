"""nin_cli.api driven from a plain script in its own process, as a notebook user would: importing it sets nothing
up, train → load → evaluate → predict → read_run agree with each other and with the run directory's files, and
mistakes raise the errors behind the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import json, logging, signal, sys
from pathlib import Path

root = logging.getLogger()
logging_before = (list(root.handlers), root.level)
signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
handlers_before = [signal.getsignal(s) for s in signals]

from nin_cli import api
from nin_cli.errors import ConfigError, DataError

out = {"import": {"logging_kept": (list(root.handlers), root.level) == logging_before,
                  "signals_kept": [signal.getsignal(s) for s in signals] == handlers_before,
                  "torch_imported": "torch" in sys.modules, "hydra_imported": "hydra" in sys.modules}}
try:
    api.train(["experiment=demo_digits", "model.micro_dept=3"], run_dir=Path("bad"))
except ConfigError as err:
    out["bad_key"] = {"exit_code": err.exit_code, "message": str(err), "dir_made": Path("bad").exists()}

run = Path("runs/a run, with=odd chars")  # quoted for Hydra by the API
summary = api.train(["experiment=demo_digits", "trainer.epochs=1", "trainer.max_steps_per_epoch=4",
                     "trainer.num_threads=1", "trainer.progress=none"], run_dir=run)
out["summary"] = summary
out["after_train"] = {"logging_kept": (list(root.handlers), root.level) == logging_before,
                      "signals_kept": [signal.getsignal(s) for s in signals] == handlers_before}

best = run / "checkpoints" / "best.pt"
trained = api.load(best, device="cpu")
out["loaded"] = {"classes": trained.classes, "image_shape": trained.image_shape,
                 "experiment": trained.cfg.experiment}
out["eval"] = api.evaluate(best)

from nin_cli.data import raw_test_images

test = raw_test_images(trained.cfg.dataset, 10_000)  # every test image, raw uint8
probs = api.predict(trained, test.images)
out["predict"] = {"shape": list(probs.shape), "dtype": str(probs.dtype),
                  "row_sum_min": probs.sum(1).min().item(), "row_sum_max": probs.sum(1).max().item(),
                  "error": 100.0 * (probs.argmax(1) != test.labels).double().mean().item(),
                  # another batch size: another kernel, the last float bits may differ
                  "by_path_diff": (api.predict(best, test.images[:7]) - probs[:7]).abs().max().item()}
try:
    api.predict(trained, test.images.float())
except TypeError as err:
    out["float_images"] = str(err)

out["read_run"] = api.read_run(run)
try:
    api.read_run("no_such_run")
except DataError as err:
    out["missing_run"] = {"exit_code": err.exit_code, "message": str(err)}
print(json.dumps(out))
'''


def test_api_from_a_plain_script(tmp_path):
    script = tmp_path / "use_api.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])

    # importing sets up nothing and pulls in neither torch nor Hydra; training puts logging and signals back
    assert out["import"] == {"logging_kept": True, "signals_kept": True, "torch_imported": False,
                             "hydra_imported": False}
    assert out["after_train"] == {"logging_kept": True, "signals_kept": True}

    # a bad key: the CLI's exit-2 error, before any directory exists
    assert out["bad_key"]["exit_code"] == 2 and not out["bad_key"]["dir_made"]
    assert "model.micro_depth" in out["bad_key"]["message"]

    # train returns summary.json's content, written under the run_dir given (spaces, comma and '=' in its name)
    run = tmp_path / "runs" / "a run, with=odd chars"
    summary = out["summary"]
    assert summary == json.loads((run / "summary.json").read_text())
    assert (summary["experiment"], summary["epochs"], summary["steps"]) == ("demo_digits", 1, 4)
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "train.log").is_file()

    assert out["loaded"] == {"classes": [str(i) for i in range(10)], "image_shape": [1, 8, 8],
                             "experiment": "demo_digits"}
    # evaluate scores the digits test split, as the run's own final test score did
    assert out["eval"]["n"] == 360 and out["eval"]["split"] == "test"
    assert abs(out["eval"]["top1_error"] - summary["best_test_error"]) < 1e-9
    # predict: probabilities of the raw test images, whose error is evaluate's
    assert out["predict"]["shape"] == [360, 10] and out["predict"]["dtype"] == "torch.float32"
    assert abs(out["predict"]["row_sum_min"] - 1) < 1e-5 and abs(out["predict"]["row_sum_max"] - 1) < 1e-5
    assert abs(out["predict"]["error"] - out["eval"]["top1_error"]) < 1e-9
    assert out["predict"]["by_path_diff"] < 1e-6
    assert "uint8" in out["float_images"]

    # read_run: the same summary, one metrics row for the one epoch, the resolved config
    record = out["read_run"]
    assert record["summary"] == summary and record["config"]["experiment"] == "demo_digits"
    assert [row["epoch"] for row in record["metrics"]] == [1]
    assert record["metrics"][0]["step"] == 4
    assert out["missing_run"]["exit_code"] == 3 and "config.yaml" in out["missing_run"]["message"]


def test_api_documents_each_function():
    from nin_cli import api

    for name in api.__all__:
        function = getattr(api, name)
        assert function.__doc__ and function.__annotations__.get("return"), name
    assert Path(api.__file__).name == "api.py"
