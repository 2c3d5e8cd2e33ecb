"""``ddlm plot`` of a run too short for curves: one warning line, dots, and step ticks that are not all alike."""

from __future__ import annotations

import pytest

from ddlm.cli import main
from ddlm.training.logger import MetricsLog
from ddlm.viz import plots

pytest.importorskip("matplotlib")


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures ``ddlm plot`` draws, kept open instead of written."""
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.append(figure))
    monkeypatch.setattr(plots.pyplot(), "close", lambda figure: None)
    return drawn


def test_a_run_of_one_logged_step_is_a_warning_and_dots(tmp_path, figures, capsys):
    run = tmp_path / "short"
    run.mkdir()
    log = MetricsLog(run)
    log.write(step=1, tokens=256, elapsed_s=0.4, lr=3e-3, train_nelbo=4.5, tokens_per_s=600)
    log.close()
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"warning: {run} has only 1 training point and 0 validation points, too few for a curve; " \
                       "train longer or log more often (log.log_every, log.eval_every)"
    assert len(lines) == 2  # and "wrote ..."
    figure = figures[0]
    figure.canvas.draw()
    steps = [label.get_text() for label in figure.axes[2].get_xticklabels()]  # the shared step axis, bottom left
    assert len(set(steps)) == len(steps) > 1, steps
    assert figure.axes[0].get_lines()[0].get_marker() == "o"  # a single point is visible


def test_runs_with_curves_give_no_warning(tmp_path, figures, capsys):
    run = tmp_path / "long"
    run.mkdir()
    log = MetricsLog(run)
    for step in range(1, 21):
        log.write(step=step, elapsed_s=step * 30.0, train_nelbo=4 / step, valid_nelbo=4 / step if step % 5 == 0 else "")
    log.close()
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [f"wrote {tmp_path / 'curves.png'}"]
    assert figures[0].axes[3].get_xlabel() == "training time (minutes)"


def test_the_whole_validation_set_is_a_star_beside_the_periodic_curve(tmp_path, figures):
    run = tmp_path / "run"
    run.mkdir()
    log = MetricsLog(run)
    for step in (5, 10):
        log.write(step=step, elapsed_s=step * 30.0, train_nelbo=4 / step, valid_nelbo=3 / step)
    log.write(step=10, elapsed_s=300.0, final_valid_nelbo=0.5)
    log.close()
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    validation = figures[0].axes[2].get_lines()  # bottom left: validation against steps
    curve = next(line for line in validation if line.get_marker() == "o")
    star = next(line for line in validation if line.get_marker() == "*" and len(line.get_xdata()))
    assert list(curve.get_ydata()) == [0.6, 0.3] and list(star.get_ydata()) == [0.5]
    assert star.get_color() == curve.get_color()


def test_the_autoregressive_term_of_an_adaptation_run_is_dashed_beside_its_training_loss(tmp_path, figures):
    run = tmp_path / "adapted"
    run.mkdir()
    log = MetricsLog(run)
    for step in (5, 10, 15):
        log.write(step=step, elapsed_s=step * 30.0, train_nelbo=4 / step, train_ar_nll=2 / step)
    log.close()
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    training = figures[0].axes[0].get_lines()  # top left: training against steps
    solid = next(line for line in training if line.get_linestyle() == "-" and len(line.get_xdata()))
    dashed = next(line for line in training if line.get_linestyle() == "--" and len(line.get_xdata()))
    assert list(dashed.get_ydata()) == pytest.approx([0.4, 0.2, 2 / 15]) and dashed.get_color() == solid.get_color()
    assert "autoregressive term" in [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()][-1]
