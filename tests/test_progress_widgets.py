"""Progress reporting and the interactive explorer degrade quietly when nobody is watching."""
import matplotlib

matplotlib.use("Agg")

from dpbook import progress, widgets  # noqa: E402


def test_progress_is_quiet_under_ci_and_prints_every_n(monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    assert not progress.interactive()
    assert list(progress.progress(range(10), desc="work", every=5)) == list(range(10))
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["work 5/10", "work 10/10"]
    assert list(progress.progress(iter(range(3)), desc="quiet")) == [0, 1, 2]
    assert capsys.readouterr().out == ""


def test_progress_executor_flag(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("DPBOOK_EXECUTING", "1")
    assert not progress.interactive()


def test_explorer_falls_back_to_a_static_grid(monkeypatch):
    monkeypatch.setenv("DPBOOK_EXECUTING", "1")
    seen = []

    def draw(ax, a=1, b=2):
        seen.append((a, b))
        ax.plot([0, 1], [a, b])

    fig = widgets.explorer(draw, controls={"a": (0, 5), "b": (0, 5)},
                           static=[dict(a=1, b=2), dict(a=3, b=4), dict(a=0, b=0)], title="t")
    assert seen == [(1, 2), (3, 4), (0, 0)]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 4 and len(visible) == 3


def test_explorer_is_live_with_sliders_when_someone_is_watching(monkeypatch):
    """The live path (a notebook outside the executor and CI; nbval runs with DPBOOK_EXECUTING like the executor,
    so it is checked here): sliders over the controls, redrawing with their values."""
    import ipywidgets

    monkeypatch.setattr(widgets, "interactive", lambda: True)
    seen = []

    def draw(ax, a=1, b=2):
        seen.append((a, b))

    live = widgets.explorer(draw, controls={"a": (0, 5), "b": (0, 5)}, static=[dict(a=1, b=2)], title="t")
    assert isinstance(live, ipywidgets.interactive)
    assert [c.description for c in live.children[:2]] == ["a", "b"]
    live.children[0].value = 4  # moving a slider redraws with the new value
    assert seen[-1][0] == 4
