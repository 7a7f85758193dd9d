"""Progress output: a tqdm bar on a terminal, one line per 10 % elsewhere, nothing when off."""
import io

from duet_jax.progress import LineProgress, progress_bar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_not_a_terminal_prints_one_line_per_ten_percent():
    out = io.StringIO()
    bar = progress_bar(total=1000, desc="eval", unit="q", file=out)
    assert isinstance(bar, LineProgress)
    for i in range(1000):
        bar.update()
        if i == 500:
            bar.set_postfix_str("3.0 tok/s")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("eval:  10% 100/1000 q [") and lines[-1].startswith("eval: 100% 1000")
    assert lines[-1].endswith("3.0 tok/s")


def test_resumed_and_unfinished_runs_and_postfix():
    out = io.StringIO()
    with progress_bar(total=12, desc="train", unit="step", initial=6, file=out) as bar:
        bar.set_postfix(loss="1.5000")
        for _ in range(3):
            bar.update()
    lines = out.getvalue().splitlines()
    # from 6/12 (50 %): 7 (58 %) crosses nothing, 8 (66 %) and 9 (75 %) cross 60 and 70;
    # close adds nothing (9 is shown)
    assert [line.split()[1] for line in lines] == ["66%", "75%"]
    assert lines[-1].endswith("loss=1.5000")


def test_terminal_gets_tqdm_and_none_means_terminal_only():
    from tqdm import tqdm

    tty = _Tty()
    bar = progress_bar(total=3, desc="x", file=tty)
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    quiet = io.StringIO()
    bar = progress_bar(total=3, desc="x", file=quiet, enabled=None)
    bar.update(3)
    bar.close()
    off = progress_bar(total=3, desc="x", file=tty, enabled=False)
    off.update(3)
    off.close()
    assert quiet.getvalue() == ""


def test_write_is_a_line_of_its_own():
    out = io.StringIO()
    bar = progress_bar(total=4, desc="train", unit="step", file=out)
    bar.write("step 1: 3 samples were truncated")
    bar.update(4)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "step 1: 3 samples were truncated" and lines[1].startswith("train: 100%")
