"""Kept-token pictures: row -> patch bookkeeping, and the PNG's pixels against the
Stage-1 MergeResult and Stage-2 kept indices of the actual prefill."""
import importlib
import os

import numpy as np
import pytest
from PIL import Image

from duet_jax.evaluation import kept_tokens as kt
from tests.helpers.tiny_checkpoint import LLAVA_SHAPED, cached_tiny_checkpoint, write_pope_fixture

PRESET = "llava15-duet-64"


def test_surviving_rows_compose_boundary_by_boundary():
    # Boundary 2 indexes the 4 rows alive after boundary 1, not the original block.
    rows = kt.surviving_rows([np.array([0, 2, 3, 5]), np.array([1, 3]), np.array([], int)], 7)
    assert [r.tolist() for r in rows] == [[0, 2, 3, 5], [2, 5], []]


def test_block_map_and_roles_from_merge_fields():
    # 9 patches; rows: CLS, patch 2, patch 6 (dominant), then contextual anchors at patches 0, 4.
    positions = np.array([0, 3, 7, 1, 5])
    members = np.array([2, 9, 6])          # vision positions of patches 1, 8, 5
    anchor_of = np.array([1, 0, 1])
    block = kt.block_map(9, positions=positions, member_positions=members,
                         member_anchor=anchor_of, num_dominant=3)
    role, group = kt.patch_roles(block)
    assert role.tolist() == [kt.ANCHOR, kt.MEMBER, kt.DOMINANT, kt.DROPPED, kt.ANCHOR, kt.MEMBER,
                             kt.DOMINANT, kt.DROPPED, kt.MEMBER]
    assert group.tolist() == [0, 1, -1, -1, 1, 1, -1, -1, 0]
    assert kt.cls_kept(block) and not kt.cls_kept(block, np.array([1, 4]))
    # Keeping only rows 1 (patch 2) and 4 (contextual token 1 = patch 4 + members 1, 5).
    role, group = kt.patch_roles(block, np.array([1, 4]))
    assert np.flatnonzero(role != kt.DROPPED).tolist() == [1, 2, 4, 5]
    assert role[2] == kt.DOMINANT and role[4] == kt.ANCHOR
    assert group[[1, 4, 5]].tolist() == [1, 1, 1]


def test_block_map_without_stage1_is_the_patch_grid():
    block = kt.block_map(4, with_cls=True)
    role, _ = kt.patch_roles(block, np.array([0, 2]))     # CLS and patch 1
    assert role.tolist() == [kt.DROPPED, kt.DOMINANT, kt.DROPPED, kt.DROPPED]
    assert kt.cls_kept(block, np.array([0, 2]))


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """Run the preset with --save-kept 1, then redo question 0's prefill to get its
    MergeResult / kept indices (same batch and shapes as the run)."""
    import duet_jax
    from duet_jax.evaluation import runner
    from duet_jax.evaluation.questions import load_questions
    ckpt = cached_tiny_checkpoint(**LLAVA_SHAPED)
    root = str(tmp_path_factory.mktemp("kept"))
    pope = write_pope_fixture(root)
    answers = os.path.join(root, "answers.jsonl")
    code = importlib.import_module("eval").main([
        "run", "--model", ckpt, "--benchmark", "pope", "--questions", pope["questions"],
        "--images", pope["images"], "--answers", answers, "--batch-size", "2",
        "--max-new-tokens", "6", "--reduction", PRESET, "--save-kept", "1"])
    assert code == 0
    model = duet_jax.load_llava(ckpt)
    questions = load_questions("pope", pope["questions"])
    batch = runner.encode_batch(model, questions, [0, 1], pope["images"], 2, 32)
    fwd = model.generate_batch(batch, max_new_tokens=6, reduction=PRESET).forward
    merge = fwd.features.merge
    png = os.path.join(root, "answers_kept", "00000_1.png")
    return {"png": np.asarray(Image.open(png).convert("RGB")), "colours": pope["colours"][0],
            "positions": np.asarray(merge.positions[0]),
            "members": np.asarray(merge.member_positions[0]),
            "anchor_of": np.asarray(merge.member_anchor[0]),
            "kept": [np.asarray(k[0]) for k in fwd.kept], "config": model.config,
            "dominant": model.reduction(PRESET).stage1.dominant}


def _close(actual, expected, tol=2):
    return np.all(np.abs(actual.astype(int) - np.asarray(expected, int)) <= tol)


def _check_panel(pic, layout, panel, rows):
    """Every patch behind `rows` (block rows) shows its legend colour; every other patch
    is greyed. Expectations come straight from the MergeResult arrays."""
    grid = pic["config"].vision.image_size // pic["config"].vision.patch_size
    dom = pic["dominant"]
    positions = pic["positions"]
    expected = {}
    for r in rows:
        if r < dom:
            if positions[r] > 0:                        # position 0 is CLS: no patch
                expected[positions[r] - 1] = ("dominant", None)
        else:
            j = r - dom
            expected[positions[r] - 1] = ("anchor", j)
            for p in pic["members"][pic["anchor_of"] == j] - 1:
                expected[p] = ("member", j)
    for p in range(grid * grid):
        y, x = layout.patch_center(panel, p, grid)
        pixel = pic["png"][y, x]
        original = pic["colours"][p // grid, p % grid]
        kind, j = expected.get(p, ("dropped", None))
        if kind == "dominant":
            assert _close(pixel, original), (panel, p)
            x0, y0 = layout.panel_origin(panel)
            r, c = divmod(p, grid)
            assert tuple(pic["png"][y0 + r * layout.cell, x0 + c * layout.cell]) == kt.OUTLINE
        elif kind == "anchor":
            assert tuple(pixel) == kt.group_color(j), (panel, p)
        elif kind == "member":      # its own colours, outlined in the token's colour
            assert _close(pixel, original), (panel, p)
            x0, y0 = layout.panel_origin(panel)
            r, c = divmod(p, grid)
            assert tuple(pic["png"][y0 + r * layout.cell, x0 + c * layout.cell]) == \
                kt.group_color(j), (panel, p)
        else:
            assert pixel[0] == pixel[1] == pixel[2], (panel, p)       # grey
            lum = original @ np.array([0.299, 0.587, 0.114])
            assert abs(int(pixel[0]) - (90 + 0.35 * lum)) <= 2, (panel, p)
    return expected


def test_png_size_and_pixels_match_the_merge_result(picture):
    cfg = picture["config"]
    layout = kt.layout_for(cfg.vision.image_size, cfg.vision.patch_size, 1 + len(picture["kept"]))
    assert picture["png"].shape == (layout.height, layout.width, 3)
    k = len(picture["positions"])
    stage1 = _check_panel(picture, layout, 0, np.arange(k))
    kinds = {kind for kind, _ in stage1.values()}
    assert kinds == {"dominant", "anchor", "member"}
    assert len(stage1) < cfg.vision.num_patches           # some patches were dropped
    # Stage-2 panels: kept indices compose boundary by boundary into block rows.
    rows = np.arange(k)
    for s, kept in enumerate(picture["kept"]):
        rows = rows[kept]
        _check_panel(picture, layout, 1 + s, rows)
    assert len(picture["kept"][0]) == k // 2 and len(picture["kept"][1]) == 0
    # Left of the panels: the model's input image itself, untouched.
    x0, y0 = layout.panel_origin(-1)
    grid = cfg.vision.image_size // cfg.vision.patch_size
    for p in range(0, grid * grid, 37):
        y, x = layout.patch_center(-1, p, grid)
        assert _close(picture["png"][y, x], picture["colours"][p // grid, p % grid]), p


def test_header_shows_question_and_answer_uncut(tmp_path):
    """Title, question and answer lines are drawn inside the picture (long ones wrapped,
    too long ones end in '...'), above the panel titles."""
    lines = kt.wrap_lines("word " * 400, 700, 3)
    assert len(lines) == 3 and lines[-1].endswith("...") and all(len(x) <= 700 / kt.CHAR_PX
                                                                  for x in lines)
    image = np.full((56, 56, 3), 200, np.uint8)
    block = kt.block_map(16)
    path = str(tmp_path / "k.png")
    long_title = "llava15-duet-64 - question 'COCO_val2014_000000000042': " + "x" * 150
    layout = kt.save_kept_picture(path, image, 14, block, with_stage1=False, title=long_title,
                                  question="Is there a dog in the image?\nAnswer the question "
                                           "using a single word or phrase.", answer="Yes")
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    ink = png.sum(-1) < 300                         # dark text pixels
    header = ink[:kt.TOP - kt.PANEL_TITLE_PX - 8]
    rows = np.flatnonzero(header.any(1))
    # 2 title lines + 2 question lines + 1 answer line, each its own band of ink
    bands = 1 + int(np.sum(np.diff(rows) > 2))
    assert bands == 5, bands
    assert not ink[:, :kt.PAD - 4].any() and not ink[:, -(kt.PAD - 4):].any()  # nothing cut
    assert png.shape[:2] == (layout.height, layout.width)
