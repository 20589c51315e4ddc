"""ternary-run: streams text, prints a summary, and turns every user error into one line + exit 2."""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import write_tiny  # noqa: E402

import engine  # noqa: E402
from engine.cli import run_main  # noqa: E402



@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(write_tiny(tmp_path_factory.mktemp("cli") / "m.tpk"))


def run(capsys, *argv):
    code = run_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


def test_generates_and_summarizes(capsys, model):
    code, out, err = run(capsys, model, "Once upon a time", "-n", "12", "--seed", "3")
    assert code == 0
    assert out.startswith("Once upon a time") and len(out) > len("Once upon a time\n")
    assert "load" in err and "prompt" in err and "generation 12 tok" in err and "tok/s" in err
    code2, out2, _ = run(capsys, model, "Once upon a time", "-n", "12", "--seed", "3")
    assert out2 == out
    code3, out3, _ = run(capsys, model, "Once upon a time", "-n", "12", "--temp", "0", "--top-k", "5",
                         "--top-p", "0.5", "--min-p", "0.1", "--repeat-penalty", "1.2",
                         "--threads", "1", "--ctx", "64")
    assert code3 == 0 and out3.startswith("Once upon a time")


@pytest.mark.parametrize("argv", [
    ["missing.tpk", "hi"],                    # no such file
    ["{text}", "hi"],                         # not a .tpk
    ["{trunc}", "hi"],                        # truncated .tpk
    ["{dir}", "hi"],                          # a directory
    ["{model}", "hi " * 200, "--ctx", "32"],  # prompt too long
    ["{model}", "hi", "-n", "100", "--ctx", "32"],  # prompt + new tokens too long
    ["{model}", "hi", "--bogus"],             # bad flag
    ["{model}", "hi", "--temp", "warm"],      # bad value
    ["{model}", "hi", "--top-p", "2"],
    ["{model}", "hi", "-n", "-1"],
    ["{model}", "hi", "--threads", "0"],
    ["{model}", "hi", "extra"],               # too many arguments
    ["{model}"],                              # a model but no prompt
    [],                                       # no prompt
])
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, model, argv):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n" * 10)
    trunc = tmp_path / "trunc.tpk"
    trunc.write_bytes(open(model, "rb").read()[:-100])
    argv = [a.format(text=text, trunc=trunc, dir=tmp_path, model=model) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and one_error_line(err), err
    assert out == ""


def test_default_model_missing(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(engine.runtime.generate, "DEFAULT_MODEL", tmp_path / "default.tpk")
    code, out, err = run(capsys, "hello")
    assert code == 2 and one_error_line(err) and "default model" in err


def test_help_explains_each_flag(capsys):
    with pytest.raises(SystemExit) as e:
        run_main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("-n", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--frequency-penalty",
                 "--presence-penalty", "--repeat-last-n", "--seed",
                 "--threads", "--ctx", "--chat", "--stop"):
        assert flag in out


def cli(*argv, stdin=None):
    # conftest.py points PYTHONPATH at the engine under test (the installed one in CI)
    return subprocess.run([sys.executable, "-m", "engine.cli", *argv], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_subprocess_error_has_no_traceback(tmp_path):
    r = cli(str(tmp_path / "nope.tpk"), "hi")
    assert r.returncode == 2 and one_error_line(r.stderr), r.stderr


def test_chat_loop(model):
    r = cli(model, "--chat", "-n", "6", "--temp", "0", stdin="Hello there\nAnd again\n\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ") >= 2
    assert r.stderr.count("generation") == 2


def test_sampling_defaults_are_the_same_in_cli_engine_and_docs():
    import inspect
    import re
    from pathlib import Path

    from engine.cli import SAMPLING_FLAGS, _parser
    from engine.runtime.sampling import DEFAULTS, SamplingParams

    parsed = vars(_parser().parse_args(["prompt"]))
    fields = {f: getattr(DEFAULTS, f) for _, f, *_ in SAMPLING_FLAGS}
    assert set(fields) == set(SamplingParams.__dataclass_fields__)  # every field has a flag
    for fn in (engine.Engine.generate, engine.Engine.stream):
        sig = inspect.signature(fn).parameters
        assert {f: sig[f].default for f in fields} == fields, fn.__name__
    assert {f: parsed[f] for f in fields} == fields
    # README's table of flags states the same defaults
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for flag, field, *_ in SAMPLING_FLAGS:
        m = re.search(rf"`{flag} [A-Z]+` \(`{field}`\) \| ([-0-9.]+) \|", readme)
        assert m, f"README has no row for {flag}"
        assert float(m.group(1)) == float(fields[field]), flag


def test_penalty_flags_change_the_text(capsys, model):
    base = ["Once upon a time", "-n", "24", "--seed", "5", "--temp", "0", "--repeat-penalty", "1",
            "--frequency-penalty", "0", "--presence-penalty", "0"]
    _, plain, _ = run(capsys, model, *base)
    outs = {plain}
    for flag, value in (("--repeat-penalty", "1.5"), ("--frequency-penalty", "1.5"), ("--presence-penalty", "1.5")):
        code, out, err = run(capsys, model, *base, flag, value)
        assert code == 0, err
        outs.add(out)
    assert len(outs) == 4  # greedy: only the penalties can move the choice
    code, _, err = run(capsys, model, "hi", "--frequency-penalty", "3")
    assert code == 2 and one_error_line(err) and "frequency_penalty" in err
