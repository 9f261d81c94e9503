"""The leaderboard report end to end on the demo phantoms with tiny bundles, and the statistics."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_cases import BUNDLE_TINY
from conftest import BUNDLES
from PIL import Image
from test_geometry import random_checkpoint

from common.figures import HEADER, PANEL
from common.io import load_array
from common.labels import BTCV_ORGANS
from common.tools.charts import MISSING
from common.tools.leaderboard import leaderboard
from common.tools.stats import bootstrap_ci, describe, paired_comparison


@pytest.fixture(scope="module")
def oracle(tiny_data, tmp_path_factory):
    """A prediction folder holding the ground truth itself: must score Dice 1 everywhere."""
    d = tmp_path_factory.mktemp("oracle")
    dl = json.loads((tiny_data / "dataset.json").read_text(encoding="utf-8"))
    for it in dl["validation"] + dl["training"]:
        name = it["image"].split("/")[-1].replace(".nii.gz", "_seg.nii.gz")
        shutil.copy(tiny_data / it["label"], d / name)
    return d


def test_leaderboard_end_to_end(tiny_data, oracle, tmp_path, capsys):
    ck = {b: random_checkpoint(b, tmp_path / f"{b}.pt") for b in ("unetr_btcv", "transunet_btcv")}
    out = tmp_path / "board"
    doc = leaderboard(
        bundles=["unetr_btcv", "transunet_btcv"],
        predictions={"oracle": str(oracle)},
        dataset_dir=str(tiny_data),
        protocol="btcv13",
        out=str(out),
        ckpts=ck,
        overrides={b: BUNDLE_TINY[b] for b in ck},
        compare=["oracle", "unetr_btcv"],
        progress=False,
    )
    for f in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "per_organ_dice.png", "per_case_dice.png"):
        assert (out / f).is_file(), f
    table = doc["bundles"]
    assert table["oracle"]["mean"]["mean_over_organs"] == pytest.approx(1.0)
    assert table["unetr_btcv"]["mean"]["mean_over_organs"] < 1.0
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "| -> published" not in md and "Wilcoxon" in md and "95 % CI" in md  # phantoms: no published number beside
    assert doc["split"] == f"datalist in {tiny_data}" and all(not row["anchors"] for row in doc["bundles"].values())
    assert doc["comparison"]["a"] == "oracle" and doc["comparison"]["mean_dice"]["mean_difference"] > 0
    # each bundle's own report, with its checkpoint hash
    res = json.loads((out / "unetr_btcv" / "results.json").read_text(encoding="utf-8"))
    assert res["meta"]["checkpoint_sha256"] and res["meta"]["protocol"] == "btcv13"
    # the charts: valid PNGs showing the three entries
    for chart in ("per_organ_dice.png", "per_case_dice.png"):
        assert _shown(out / chart)["entries"] == ["unetr_btcv", "transunet_btcv", "oracle"]
    # overlays: one per case, a row per organ present, CT | GT | 3 predictions
    case = json.loads((tiny_data / "dataset.json").read_text(encoding="utf-8"))["validation"][0]
    gt, _ = load_array(tiny_data / case["label"])
    present = sum(1 for o in BTCV_ORGANS if (gt == o.id).any())
    png = out / "overlays" / "phantom0003.png"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size == ((2 + 3) * PANEL, HEADER + present * PANEL)
        arr = np.asarray(im)
        assert arr.std() > 10, "the overlay is not blank"
    printed = capsys.readouterr().out
    assert "leaderboard written to" in printed and str(out / "leaderboard.md") in printed


def _two_case_datalist(tiny_data, tmp_path) -> tuple[str, list[dict]]:
    """A datalist whose validation list holds two phantoms (absolute paths)."""
    dl = json.loads((tiny_data / "dataset.json").read_text(encoding="utf-8"))
    items = [{k: str(tiny_data / v) for k, v in it.items()} for it in (dl["training"] + dl["validation"])[-2:]]
    path = tmp_path / "two_cases.json"
    path.write_text(json.dumps({"training": items, "validation": items}), encoding="utf-8")
    return str(path), items


def _dice(p: np.ndarray, g: np.ndarray) -> float:
    return 2.0 * np.logical_and(p, g).sum() / (p.sum() + g.sum()) if p.sum() + g.sum() else float("nan")


def test_leaderboard_statistics_on_two_cases_with_known_predictions(tiny_data, tmp_path):
    """An oracle and a corrupted copy of the ground truth on two cases: every per-case Dice, the paired differences
    and the Wilcoxon p-value are known exactly."""
    from scipy.stats import wilcoxon

    from common.labels import organ

    datalist, items = _two_case_datalist(tiny_data, tmp_path)
    oracle, corrupted = tmp_path / "oracle", tmp_path / "corrupted"
    oracle.mkdir()
    corrupted.mkdir()
    expected: dict[str, float] = {}
    for n, it in enumerate(items):
        img = nib.load(it["label"])
        gt = np.asarray(img.dataobj).astype(np.uint8)
        bad = gt.copy()
        gone = ("liver", "spleen")[n]  # case 0 loses the liver, case 1 the spleen; both lose half of the stomach
        bad[bad == organ(gone).id] = 0
        stomach = np.argwhere(bad == organ("stomach").id)
        half = stomach[: len(stomach) // 2]
        bad[tuple(half.T)] = 0
        name = Path(it["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        nib.save(nib.Nifti1Image(gt, img.affine), str(oracle / name))
        nib.save(nib.Nifti1Image(bad, img.affine), str(corrupted / name))
        per_organ = [_dice(bad == o.id, gt == o.id) for o in BTCV_ORGANS]
        expected[Path(it["label"]).name.replace(".nii.gz", "")] = float(np.nanmean(per_organ))
    doc = leaderboard(
        predictions={"oracle": str(oracle), "corrupted": str(corrupted)},
        dataset_dir=str(tiny_data),
        datalist_file=datalist,
        protocol="btcv13",
        out=str(tmp_path / "board"),
        compare=["oracle", "corrupted"],
        overlay_cases=0,
        progress=False,
    )
    res = json.loads((tmp_path / "board" / "corrupted" / "results.json").read_text(encoding="utf-8"))
    got = res["summary"]["case_mean_dice"]
    assert set(got) == set(expected) and len(got) == 2
    for cid, value in expected.items():
        assert got[cid] == pytest.approx(value, abs=1e-12), cid
    assert doc["bundles"]["oracle"]["mean"]["mean"] == 1.0
    comp = doc["comparison"]["mean_dice"]
    diffs = [1.0 - expected[c] for c in sorted(expected)]
    assert comp["n"] == 2 and list(comp["differences"].values()) == pytest.approx(diffs, abs=1e-12)
    assert comp["mean_difference"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert comp["wilcoxon_p"] == pytest.approx(wilcoxon(diffs).pvalue)
    liver = doc["comparison"]["organs"]["liver"]
    assert liver["differences"] == pytest.approx(dict(zip(sorted(expected), [1.0, 0.0])))


def test_leaderboard_synapse_protocol_with_a_9_class_bundle(tiny_data, tmp_path):
    """A 9-class bundle's predictions are read in Synapse ids: its scores equal an independent scoring of its own
    prediction files mapped back to BTCV ids; a Synapse-id oracle scores 1 everywhere."""
    from common.labels import from_btcv_lut, organ, to_btcv_lut

    b = "transunet_btcv"
    synapse = BUNDLES / b / "configs" / "synapse.json"
    ckpt = random_checkpoint(b, tmp_path / "w9.pt", extra_configs=[synapse])
    datalist, items = _two_case_datalist(tiny_data, tmp_path)
    oracle = tmp_path / "synapse_oracle"
    oracle.mkdir()
    for it in items:
        img = nib.load(it["label"])
        ids = from_btcv_lut("synapse8")[np.asarray(img.dataobj).astype(np.int64)].astype(np.uint8)
        nib.save(
            nib.Nifti1Image(ids, img.affine), str(oracle / Path(it["image"]).name.replace(".nii.gz", "_seg.nii.gz"))
        )
    out = tmp_path / "syn"
    doc = leaderboard(
        bundles=[b],
        predictions={"oracle9": str(oracle)},
        pred_ids={"oracle9": "synapse8"},
        dataset_dir=str(tiny_data),
        datalist_file=datalist,
        protocol="synapse8",
        out=str(out),
        ckpts={b: ckpt},
        configs={b: [str(synapse)]},
        overrides={b: BUNDLE_TINY[b]},
        overlay_cases=0,
        progress=False,
    )
    assert doc["bundles"]["oracle9"]["mean"]["mean_over_organs"] == 1.0
    res = json.loads((out / b / "results.json").read_text(encoding="utf-8"))
    assert res["meta"]["protocol"] == "synapse8" and len(res["cases"]) == 2
    organs = ("aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach")
    assert tuple(doc["bundles"][b]["organs"]) == organs
    for it in items:
        cid = Path(it["label"]).name.replace(".nii.gz", "")
        pred9 = np.asarray(
            nib.load(str(out / b / "predictions" / Path(it["image"]).name.replace(".nii.gz", "_seg.nii.gz"))).dataobj
        )
        assert pred9.max() <= 8 and len(np.unique(pred9)) > 2  # a 9-class prediction with several organs
        pred, gt = to_btcv_lut("synapse8")[pred9.astype(np.int64)], np.asarray(nib.load(it["label"]).dataobj)
        for key in organs:
            p, g = pred == organ(key).id, gt == organ(key).id
            want = _dice(p, g) if p.any() and g.any() else (1.0 if p.any() else 0.0)  # the papers' rule
            assert res["cases"][cid]["scores"][key]["dice"] == pytest.approx(want, abs=1e-12), (cid, key)
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "| -> published" not in md  # a datalist of one's own, not the Synapse test cases


def test_bootstrap_and_paired_statistics():
    v = [0.8, 0.82, 0.85, 0.79, 0.9, 0.88]
    lo, hi = bootstrap_ci(v, seed=1)
    assert lo < np.mean(v) < hi and (lo, hi) == bootstrap_ci(v, seed=1)
    d = describe(v + [float("nan")])
    assert d["n"] == 6 and d["std"] == pytest.approx(np.std(v, ddof=1))
    a = {f"c{i}": x for i, x in enumerate(v)}
    b = {k: x - 0.05 for k, x in a.items()}
    p = paired_comparison(a, b)
    assert p["mean_difference"] == pytest.approx(0.05) and p["n"] == 6
    from scipy.stats import wilcoxon

    assert p["wilcoxon_p"] == pytest.approx(wilcoxon([0.05] * 6).pvalue)
    assert paired_comparison(a, a)["wilcoxon_p"] == 1.0


def test_published_numbers_only_under_the_same_protocol_and_split():
    from common.tools.anchors import anchors_for

    assert [a["source"] for a in anchors_for("transunet_btcv", "synapse8", "synapse")] == ["TransUNet paper, Table 1"]
    assert (
        anchors_for("transunet_btcv", "synapse8", "dataset_0")
        == []
        == anchors_for("transunet_btcv", "btcv13", "synapse")
    )
    assert anchors_for("unetr_btcv", "btcv13", None) == []  # demo phantoms or one's own datalist
    assert [a["mean_dice"] for a in anchors_for("swin_unetr_btcv", "btcv13", "cv5")] == [0.7889]


# --- the report itself, pinned ----------------------------------------------------------------------------------------
# A cohort of integer boxes (no floating point anywhere in its making) and two prediction folders derived from it by
# integer edits: the leaderboard's text outputs are compared with files written by the code before its steps were
# split. Regenerate with LEADERBOARD_GOLDEN=write only when the report is meant to change, and review the diff.
GOLDEN = Path(__file__).parent / "data" / "leaderboard"
_VOLATILE = ("time", "date", "seconds", "duration", "machine", "host", "version", "sha256", "created")


def _box_cohort(root: Path, n_cases: int = 4) -> tuple[Path, Path, Path]:
    """Labels of 13 boxes each (sizes varying by case), images derived from them, and two prediction folders: one
    shifting every box by one voxel, one also missing a different organ in each case."""
    shape = (36, 36, 12)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    items, shifted, missing = [], root / "shifted", root / "missing"
    for d in (root / "images", root / "labels", shifted, missing):
        d.mkdir(parents=True)
    for n in range(n_cases):
        lab = np.zeros(shape, np.uint8)
        for k in range(13):
            x, y = 1 + 9 * (k % 4), 1 + 9 * (k // 4)
            lab[x : x + 4 + (n + k) % 4, y : y + 5 + (n * k) % 3, 2 : 6 + (n + 2 * k) % 5] = k + 1
        name = f"box{n:02d}"
        nib.save(nib.Nifti1Image((lab.astype(np.int16) * 20 - 100), affine), str(root / "images" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(root / "labels" / f"{name}.nii.gz"))
        moved = np.roll(lab, 1, axis=0)
        nib.save(nib.Nifti1Image(moved, affine), str(shifted / f"{name}_seg.nii.gz"))
        moved[moved == 1 + (3 * n) % 13] = 0
        nib.save(nib.Nifti1Image(moved, affine), str(missing / f"{name}_seg.nii.gz"))
        items.append({"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": items[:1], "validation": items}), encoding="utf-8")
    return root, shifted, missing


def _pinned(value, root: str):
    """The report with what legitimately changes between runs (paths under the test's folder, times, versions,
    the machine) replaced by fixed words, and numbers to 10 decimals (summation order may differ between CPUs)."""
    if isinstance(value, dict):
        return {
            k: "<volatile>" if any(w in k.lower() for w in _VOLATILE) else _pinned(v, root) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_pinned(v, root) for v in value]
    if isinstance(value, float):
        return round(value, 10)
    return value.replace(root, "<out>") if isinstance(value, str) else value


def test_leaderboard_report_is_unchanged_on_a_fixed_cohort(tmp_path):
    data, shifted, missing = _box_cohort(tmp_path / "cohort")
    out = tmp_path / "board"
    leaderboard(
        predictions={"shifted": str(shifted), "missing": str(missing)},
        dataset_dir=str(data),
        datalist_file=str(data / "dataset.json"),
        protocol="btcv13",
        out=str(out),
        compare=["shifted", "missing"],
        overlay_cases=1,
        progress=False,
    )
    root = str(tmp_path)
    written = {
        "leaderboard.md": (out / "leaderboard.md").read_text(encoding="utf-8").replace(root, "<out>"),
        "leaderboard.csv": (out / "leaderboard.csv").read_text(encoding="utf-8").replace(root, "<out>"),
        "leaderboard.json": json.dumps(
            _pinned(json.loads((out / "leaderboard.json").read_text(encoding="utf-8")), root), indent=1, sort_keys=True
        ),
    }
    for name in ("shifted", "missing"):
        res = json.loads((out / name / "results.json").read_text(encoding="utf-8"))
        written[f"{name}.results.json"] = json.dumps(_pinned(res, root), indent=1, sort_keys=True)
    if os.environ.get("LEADERBOARD_GOLDEN") == "write":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, text in written.items():
            (GOLDEN / name).write_text(text, encoding="utf-8")
    for name, text in written.items():
        assert text == (GOLDEN / name).read_text(encoding="utf-8"), f"{name} differs from {GOLDEN / name}"


def _shown(png: Path) -> dict:
    """What a chart says it shows (its PNG ``Description``), after checking it is a valid, non-blank image."""
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert np.asarray(im.convert("L")).std() > 5, f"{png} is blank"
        return json.loads(im.text["Description"])


def test_charts_show_each_entry_with_its_interval_and_its_cases(tmp_path):
    """The per-organ chart draws each entry's mean Dice with the bootstrap interval of the table as its error bar;
    the per-case chart draws each entry's per-case Dice of each organ, one point per scored case."""
    from matplotlib.collections import LineCollection

    from common.tools.charts import per_case_figure, per_organ_figure

    data, shifted, missing = _box_cohort(tmp_path / "cohort")
    out = tmp_path / "board"
    doc = leaderboard(
        predictions={"shifted": str(shifted), "missing": str(missing)},
        dataset_dir=str(data),
        datalist_file=str(data / "dataset.json"),
        out=str(out),
        overlay_cases=0,
        progress=False,
    )
    organs = [o.key for o in BTCV_ORGANS]
    for key, chart in (("per_organ", "per_organ_dice.png"), ("per_case", "per_case_dice.png")):
        assert doc["figures"][key] == str(out / chart)
        shown = _shown(out / chart)
        assert shown["entries"] == ["shifted", "missing"] and shown["organs"] == organs and shown["chart"] == key
    assert "Charts: `per_organ_dice.png`, `per_case_dice.png`." in (out / "leaderboard.md").read_text(encoding="utf-8")

    table = doc["bundles"]
    ax = per_organ_figure(table, "btcv13", "t").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["shifted", "missing"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [o.name for o in BTCV_ORGANS] + ["case mean"]
    bars = [c for c in ax.containers if hasattr(c, "errorbar")]
    for name, container in zip(("shifted", "missing"), bars):
        stats = [table[name]["organs"][k]["dice"] for k in organs] + [table[name]["mean"]]
        assert [r.get_height() for r in container] == pytest.approx([s["mean"] for s in stats])
        segments = next(c for c in container.errorbar.lines[2] if isinstance(c, LineCollection)).get_segments()
        drawn = [v for seg in segments for v in (seg[0][1], seg[1][1])]
        assert drawn == pytest.approx([v for s in stats for v in (s["ci_low"], s["ci_high"])])
    assert len({s["ci_low"] for s in (table["missing"]["organs"][k]["dice"] for k in organs)}) > 1  # not all alike

    per_case = {n: {k: [] for k in organs} for n in ("shifted", "missing")}
    for n in per_case:
        for case in json.loads((out / n / "results.json").read_text(encoding="utf-8"))["cases"].values():
            for k in organs:
                per_case[n][k].append(case["scores"][k]["dice"])
    fig = per_case_figure(per_case, "btcv13", "t")
    panels = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in panels] == [o.name for o in BTCV_ORGANS]
    for panel, k in zip(panels, organs):
        points = [line.get_ydata() for line in panel.lines if line.get_marker() == "o"]
        assert [sorted(p) for p in points] == [sorted(per_case[n][k]) for n in per_case], k


def test_leaderboard_without_matplotlib_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """No matplotlib: one line on stderr names it and how to install it; the tables and overlays are written."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    data, shifted, missing = _box_cohort(tmp_path / "cohort")
    out = tmp_path / "board"
    doc = leaderboard(
        predictions={"shifted": str(shifted), "missing": str(missing)},
        dataset_dir=str(data),
        datalist_file=str(data / "dataset.json"),
        out=str(out),
        overlay_cases=1,
        progress=False,
    )
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "matplotlib" in line]
    assert said == [MISSING] and "Traceback" not in err
    assert doc["figures"] == {} and not list(out.glob("*.png"))
    assert (out / "overlays" / "box00.png").is_file() and (out / "leaderboard.csv").is_file()
    assert "Charts: none drawn (matplotlib is not installed)." in (out / "leaderboard.md").read_text(encoding="utf-8")
