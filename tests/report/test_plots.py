import pytest

from itop.report import (ReportError, load_run, plot_accuracy_vs_sparsity, plot_itop_rate,
                         plot_layer_density)
from itop.report.plots import rate_curve

from .fake import summary, write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


@pytest.fixture
def runs(run_dirs):
    return [load_run(p) for p in run_dirs]


def test_accuracy_vs_sparsity(runs, tmp_path):
    assert_png(plot_accuracy_vs_sparsity(runs, tmp_path / "acc.png"))


def test_accuracy_plot_handles_seeds_several_models_and_dense_only(runs, tmp_path):
    extra = summary("SET-ITOP", 0.1, 0.93, 0.7, 0.1, 0.1, model="lenet5")
    runs.append(load_run(write_run(tmp_path / "more", "seed1", 0.1, extra)))
    runs.append(load_run(write_run(tmp_path / "more", "seed2", 0.1, {**extra, "test_acc": 0.92})))
    assert_png(plot_accuracy_vs_sparsity(runs, tmp_path / "acc.png"))
    assert_png(plot_accuracy_vs_sparsity([r for r in runs if r.dense], tmp_path / "dense.png"))


def test_accuracy_plot_without_finished_runs_is_an_error(runs, tmp_path):
    with pytest.raises(ReportError, match="no finished runs"):
        plot_accuracy_vs_sparsity([runs[3]], tmp_path / "acc.png")


def test_rate_curve_merges_update_and_epoch_records_in_step_order(runs):
    steps, rates = rate_curve(runs[0])
    assert steps == [40, 80, 100, 140, 180, 200]
    assert rates == pytest.approx([0.09, 0.13, 0.15, 0.19, 0.23, 0.25])


def test_itop_rate(runs, tmp_path):
    assert_png(plot_itop_rate(runs, tmp_path / "rs.png"))
    with pytest.raises(ReportError, match="no run has itop_rate"):
        plot_itop_rate([], tmp_path / "none.png")


def test_layer_density_with_and_without_explored_share(runs, tmp_path):
    assert_png(plot_layer_density(runs[0], tmp_path / "layers.png"))
    run = runs[1]
    run.metrics = [r for r in run.metrics if r["kind"] == "epoch"]
    assert_png(plot_layer_density(run, tmp_path / "layers_only.png"))
    run.metrics = []
    with pytest.raises(ReportError, match="no metrics record has layer_density"):
        plot_layer_density(run, tmp_path / "nothing.png")


def test_plotting_leaves_pyplot_untouched(runs, tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    plot_itop_rate(runs, tmp_path / "rs.png")
    assert matplotlib.get_backend() == backend
    plt = __import__("sys").modules.get("matplotlib.pyplot")
    assert plt is None or plt.get_fignums() == []
