import struct

import pytest

from itop.report import (
    ReportError,
    load_run,
    plot_accuracy_vs_rs,
    plot_accuracy_vs_sparsity,
    plot_accuracy_vs_training_flops,
    plot_itop_rate,
    plot_layer_density,
)
from itop.report.plots import rate_curve

from .fake import summary, write_run, write_study

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


def drawn(monkeypatch):
    """Record what each plot put on its axes before it is saved: {file name: facts}."""
    from itop.report import plots

    seen = {}
    save = plots._save

    def record(fig, path):
        fig.tight_layout()  # as saved
        ax = fig.axes[0]
        legend = ax.get_legend()
        seen[path.name] = {
            "title": ax.get_title(),
            "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(),
            "xscale": ax.get_xscale(),
            "lines": {
                **{
                    line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                    for line in ax.get_lines()
                    if not line.get_label().startswith("_")
                },
                **{bars.get_label(): (list(bars.lines[0].get_xdata()), list(bars.lines[0].get_ydata())) for bars in ax.containers},
            },
            "legend": [t.get_text() for t in legend.get_texts()],
            "legend_anchor": legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted()).bounds[:2],
            "notes": [t.get_text() for t in ax.texts],
            "axes_width": ax.get_window_extent().width,  # pixels, as in the PNG (same dpi)
        }
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", record)
    return seen


@pytest.fixture
def study(tmp_path):
    return [load_run(p) for p in write_study(tmp_path / "study")]


def test_accuracy_vs_rs_draws_one_line_per_method_and_sparsity_through_group_means(study, tmp_path, monkeypatch):
    seen = drawn(monkeypatch)
    assert_png(plot_accuracy_vs_rs(study, tmp_path / "rs.png"))
    facts = seen["rs.png"]
    xs, ys = facts["lines"]["SET-ITOP, sparsity 0.9"]
    # sorted by Rs: every 400, 100, 25 steps; seeds 0-2 add 0.01 to Rs and 0.2 points accuracy
    assert xs == pytest.approx([0.31, 0.61, 0.91]) and ys == pytest.approx([91.2, 92.2, 93.2])
    assert facts["lines"]["Dense: 95.10 ± 0.14%"][1] == pytest.approx([95.1, 95.1])
    assert facts["lines"]["Static, sparsity 0.9: 90.10 ± 0.14%"][1] == pytest.approx([90.1, 90.1])
    assert facts["notes"] == []  # the points are the update intervals; the tables name them
    assert "Rs" in facts["title"] and "share of weights ever active" in facts["xlabel"]
    assert facts["ylabel"] == "Top-1 test accuracy (%), best-validation checkpoint"
    assert facts["legend_anchor"][1] < 0.0  # below the data area


def test_accuracy_vs_rs_final_uses_the_final_epoch(study, tmp_path, monkeypatch):
    seen = drawn(monkeypatch)
    plot_accuracy_vs_rs(study, tmp_path / "rs.png", accuracy="final")
    assert seen["rs.png"]["lines"]["SET-ITOP, sparsity 0.9"][1] == pytest.approx([90.7, 91.7, 92.7])
    assert seen["rs.png"]["ylabel"].endswith("final epoch")
    del study[0].summary["final_test_acc"]  # an older summary: left out of the mean
    plot_accuracy_vs_rs(study, tmp_path / "rs.png", accuracy="final")
    assert seen["rs.png"]["lines"]["SET-ITOP, sparsity 0.9"][1][2] == pytest.approx(92.8)
    with pytest.raises(ReportError, match="accuracy must be one of best, final"):
        plot_accuracy_vs_rs(study, tmp_path / "rs.png", accuracy="last")


def test_accuracy_vs_rs_without_dynamic_sparse_rs_is_an_error(study, tmp_path):
    baselines = [r for r in study if r.summary["method"] in ("Dense", "Static")]
    with pytest.raises(ReportError, match="no sparse run with a changing topology has Rs"):
        plot_accuracy_vs_rs(baselines, tmp_path / "rs.png")
    assert not (tmp_path / "rs.png").exists()
    for run in study:
        del run.summary["final_test_acc"]
    with pytest.raises(ReportError, match="no finished run has final_test_acc"):
        plot_accuracy_vs_rs(study, tmp_path / "rs.png", accuracy="final")


def test_accuracy_vs_training_flops(study, tmp_path, monkeypatch):
    seen = drawn(monkeypatch)
    assert_png(plot_accuracy_vs_training_flops(study, tmp_path / "flops.png"))
    facts = seen["flops.png"]
    # the summaries give dense_training_flops (3.2e18): the axis is the runs' absolute FLOPs
    assert facts["xscale"] == "log" and facts["xlabel"] == "Training FLOPs of the whole run (log scale)"
    xs, ys = facts["lines"]["SET-ITOP"]
    assert xs == pytest.approx([3.2e17] * 3) and sorted(ys) == pytest.approx([91.2, 92.2, 93.2])
    assert facts["lines"]["Static"] == (pytest.approx([3.2e17]), pytest.approx([90.1]))
    assert facts["lines"]["Dense: 95.10 ± 0.14%"] == (pytest.approx([3.2e18]), pytest.approx([95.1]))
    assert facts["legend_anchor"][1] < 0.0
    dense_only = [r for r in study if r.summary["method"] == "Dense"]
    with pytest.raises(ReportError, match="no sparse run has training_flops"):
        plot_accuracy_vs_training_flops(dense_only, tmp_path / "none.png")


def test_several_models_are_named_in_the_labels(study, tmp_path, monkeypatch):
    for run in study[:3] + study[9:11]:
        run.summary["model"] = "lenet5"
    seen = drawn(monkeypatch)
    plot_accuracy_vs_rs(study, tmp_path / "rs.png")
    assert "SET-ITOP, sparsity 0.9 (lenet5, mnist)" in seen["rs.png"]["lines"]
    assert "Dense (lenet5, mnist): 95.00%" in seen["rs.png"]["legend"]
    plot_accuracy_vs_training_flops(study, tmp_path / "flops.png")
    assert "SET-ITOP (lenet300, mnist)" in seen["flops.png"]["lines"]


def test_new_plots_leave_pyplot_untouched(study, tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    plot_accuracy_vs_rs(study, tmp_path / "rs.png")
    plot_accuracy_vs_training_flops(study, tmp_path / "flops.png")
    assert matplotlib.get_backend() == backend
    plt = __import__("sys").modules.get("matplotlib.pyplot")
    assert plt is None or plt.get_fignums() == []


def test_accuracy_vs_rs_gives_runs_of_another_batch_size_a_line_of_their_own(study, tmp_path, monkeypatch):
    extra = [
        load_run(
            write_run(
                tmp_path,
                f"b32-{seed}",
                0.1,
                summary("SET-ITOP", 0.1, 0.95, 0.8 + seed / 100, 0.1, 0.1),
                batch_size=32,
                update_frequency=100,
                seed=seed,
            )
        )
        for seed in range(2)
    ]
    seen = drawn(monkeypatch)
    plot_accuracy_vs_rs([*study, *extra], tmp_path / "rs.png")
    lines = seen["rs.png"]["lines"]
    assert lines["SET-ITOP, sparsity 0.9, batch_size=32"][0] == pytest.approx([0.805])
    sweep = [name for name in lines if name.startswith("SET-ITOP") and "batch_size=32" not in name]
    assert len(sweep) == 1 and len(lines[sweep[0]][0]) == 3  # the interval sweep stays one line


def test_accuracy_vs_training_flops_puts_a_shorter_dense_run_at_its_own_cost(study, tmp_path, monkeypatch):
    short = summary("Dense", 1.0, 0.93, 1.0, 1.0, 1.0, dense_training_flops=1.6e17)  # a dense run of 1/20 the length
    runs = [*study, load_run(write_run(tmp_path, "short-dense", 1.0, short, epochs=5))]
    seen = drawn(monkeypatch)
    plot_accuracy_vs_training_flops(runs, tmp_path / "flops.png")
    xs = {label.split(":")[0]: points[0] for label, points in seen["flops.png"]["lines"].items() if label.startswith("Dense")}
    assert sorted(x for values in xs.values() for x in values) == pytest.approx([1.6e17, 3.2e18])


def test_accuracy_vs_multiplier_draws_accuracy_and_rs_per_training_length(tmp_path, monkeypatch):
    from itop.report.plots import plot_accuracy_vs_multiplier, trained_at_several_lengths

    runs = [
        load_run(
            write_run(
                tmp_path,
                f"m{m}-s{seed}",
                0.02,
                summary(method_name(m), 0.02, 0.90 + m / 100, 0.1 * m, 0.02, 0.02, multiplier=m),
                multiplier=m,
                seed=seed,
            )
        )
        for m in (1, 2, 5)
        for seed in range(2)
    ]
    dense = load_run(write_run(tmp_path, "dense", 1.0, summary("Dense", 1.0, 0.95, 1.0, 1.0, 1.0)))
    assert trained_at_several_lengths(runs) and not trained_at_several_lengths(runs[:2] + [dense])
    seen = drawn(monkeypatch)
    assert_png(plot_accuracy_vs_multiplier([*runs, dense], tmp_path / "m.png"))
    lines = seen["m.png"]["lines"]
    assert lines["SET-ITOP, sparsity 0.98: accuracy"] == ([1.0, 2.0, 5.0], pytest.approx([91.0, 92.0, 95.0]))
    assert lines["Dense: 95.00%"][1] == pytest.approx([95.0, 95.0])


def method_name(multiplier):
    return "SET-ITOP" + (f" ({multiplier} times)" if multiplier > 1 else "")


def test_accuracy_vs_multiplier_keeps_another_setting_on_its_own_line(tmp_path, monkeypatch):
    from itop.report.plots import plot_accuracy_vs_multiplier

    runs = [
        load_run(
            write_run(
                tmp_path,
                f"b{batch}-m{m}",
                0.02,
                summary(method_name(m), 0.02, 0.90 + m / 100 + batch / 10_000, 0.1 * m, 0.02, 0.02, multiplier=m),
                multiplier=m,
                batch_size=batch,
            )
        )
        for m in (1, 5)
        for batch in (32, 100)
    ]
    seen = drawn(monkeypatch)
    plot_accuracy_vs_multiplier(runs, tmp_path / "m.png")
    lines = seen["m.png"]["lines"]
    assert lines["SET-ITOP, sparsity 0.98, batch_size=32: accuracy"] == ([1.0, 5.0], pytest.approx([91.32, 95.32]))
    assert lines["SET-ITOP, sparsity 0.98, batch_size=100: accuracy"] == ([1.0, 5.0], pytest.approx([92.0, 96.0]))


def test_accuracy_vs_training_flops_names_distributions_and_sparsities_apart(tmp_path, monkeypatch):
    runs = [
        load_run(
            write_run(
                tmp_path, f"{init}-{density}", density, summary("SET-ITOP", density, 0.9 + density, 0.3, density, density), sparse_init=init
            )
        )
        for init, density in (("ERK", 0.05), ("ER", 0.05), ("ER", 0.01))
    ]
    seen = drawn(monkeypatch)
    plot_accuracy_vs_training_flops(runs, tmp_path / "flops.png")
    assert set(seen["flops.png"]["lines"]) == {
        "SET-ITOP, sparsity 0.95, sparse_init=ERK",
        "SET-ITOP, sparsity 0.95, sparse_init=ER",
        "SET-ITOP, sparsity 0.99, sparse_init=ER",
    }


def test_accuracy_vs_multiplier_names_each_dense_baseline(tmp_path, monkeypatch):
    from itop.report.plots import plot_accuracy_vs_multiplier

    runs = [
        load_run(write_run(tmp_path, f"m{m}", 0.02, summary(method_name(m), 0.02, 0.9, 0.1 * m, 0.02, 0.02, multiplier=m), multiplier=m))
        for m in (1, 2)
    ]
    runs += [
        load_run(write_run(tmp_path, f"dense{b}", 1.0, summary("Dense", 1.0, 0.94 + b / 10_000, 1.0, 1.0, 1.0), batch_size=b))
        for b in (32, 100)
    ]
    seen = drawn(monkeypatch)
    plot_accuracy_vs_multiplier(runs, tmp_path / "m.png")
    assert {"Dense [batch_size=32]: 94.32%", "Dense [batch_size=100]: 95.00%"} <= set(seen["m.png"]["lines"])


def png_width(path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]  # the IHDR chunk's width


def test_accuracy_vs_sparsity_keeps_runs_of_another_length_apart(tmp_path, monkeypatch):
    runs = [
        load_run(
            write_run(
                tmp_path, f"e{epochs}-s{seed}", 0.1, summary("SET-ITOP", 0.1, acc + seed / 100, 0.5, 0.1, 0.1), epochs=epochs, seed=seed
            )
        )
        for epochs, acc in ((3, 0.80), (10, 0.90))
        for seed in range(2)
    ]
    seen = drawn(monkeypatch)
    plot_accuracy_vs_sparsity(runs, tmp_path / "acc.png")
    lines = seen["acc.png"]["lines"]
    assert lines["SET-ITOP, epochs=3"] == (pytest.approx([0.9]), pytest.approx([80.5]))  # the mean over seeds only
    assert lines["SET-ITOP, epochs=10"] == (pytest.approx([0.9]), pytest.approx([90.5]))


def test_accuracy_vs_sparsity_names_each_dense_baseline(tmp_path, monkeypatch):
    runs = [
        load_run(write_run(tmp_path, f"dense{b}", 1.0, summary("Dense", 1.0, 0.94 + b / 10_000, 1.0, 1.0, 1.0), batch_size=b))
        for b in (32, 100)
    ]
    runs.append(load_run(write_run(tmp_path, "set", 0.1, summary("SET-ITOP", 0.1, 0.9, 0.5, 0.1, 0.1), batch_size=32)))
    seen = drawn(monkeypatch)
    plot_accuracy_vs_sparsity(runs, tmp_path / "acc.png")
    assert {"Dense [batch_size=32]: 94.32%", "Dense [batch_size=100]: 95.00%"} <= set(seen["acc.png"]["lines"])


@pytest.fixture
def many_series(study, tmp_path):
    """The study plus RigL-ITOP at 3 sparsities x 4 batch sizes: 9 to 17 series with long names."""
    extra = [
        load_run(
            write_run(
                tmp_path,
                f"rigl-{density}-{batch}",
                density,
                summary("RigL-ITOP", density, 0.9 + batch / 10_000, 0.5 + density, density, density),
                batch_size=batch,
                update_frequency=100,
            )
        )
        for density in (0.05, 0.02, 0.01)
        for batch in (16, 32, 64, 128)
    ]
    return [*study, *extra]


@pytest.mark.parametrize(
    "plot", [plot_accuracy_vs_rs, plot_accuracy_vs_training_flops, plot_accuracy_vs_sparsity], ids=lambda f: f.__name__
)
def test_a_long_legend_leaves_the_axes_their_width(plot, many_series, tmp_path, monkeypatch):
    seen = drawn(monkeypatch)
    path = plot(many_series, tmp_path / "plot.png")
    facts = seen["plot.png"]
    assert len(facts["legend"]) >= 9
    assert facts["axes_width"] >= 0.6 * png_width(path)
    assert facts["legend_anchor"][1] < 0.0  # below the axes, kept in the saved image
    assert_png(path)
