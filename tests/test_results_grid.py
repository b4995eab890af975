"""The terminal grid (``db.results.sweep_grid`` / ``prompt_grids``) places a named steer on its strength
multiplier, as `serve` and the search do, and a feature on its strength; rows written by hand here."""

from saejobs.db import results


def row(gid, features, output, sampling=None, kind="STEERED"):
    return {"id": gid, "type": kind, "features": features, "strengths": [f["strength"] for f in features],
            "feature": results.grid_column(features, sampling), "prompt": "Hi", "seed": 1, "sampling": sampling,
            "output": "Hi" + output, "labels": [None] * len(features)}


def test_a_named_steer_sits_at_its_multiplier_and_a_feature_at_its_strength():
    calm = [{"index": 3, "strength": 40.0}, {"sae": "other", "index": 9, "strength": 10.0}]
    rows = [row(1, [], " default", kind="DEFAULT"),
            row(2, [{"index": 3, "strength": 2.0}], " f3 at 2"),
            row(3, [{"index": 3, "strength": 40.0}], " f3 at 40"),
            row(4, calm, " calm x2", {"steer": "calm", "strength_multiplier": 2.0}),
            row(5, calm, " calm x1", {"steer": "calm", "strength_multiplier": 1.0})]
    grid = results.sweep_grid(rows)
    assert grid["columns"] == ["prompt", "seed", "strength", "DEFAULT", "3", "calm"]
    assert grid["rows"] == [["Hi", 1, 1.0, "Hi default", "", "Hi calm x1"],
                            ["Hi", 1, 2.0, "Hi default", "Hi f3 at 2", "Hi calm x2"],
                            ["Hi", 1, 40.0, "Hi default", "Hi f3 at 40", ""]]
    (page,) = results.prompt_grids(rows)
    assert page["default"] == " default" and page["columns"] == ["strength", "3", "calm"]
    assert page["rows"] == [[1.0, "", " calm x1"], [2.0, " f3 at 2", " calm x2"], [40.0, " f3 at 40", ""]]


def test_a_steer_named_like_a_feature_column_gets_its_own_column():
    """A steer named "3" is not feature 3's column, nor "1+2" the pair's, nor "DEFAULT" the baseline's; the escape
    itself is escaped, so every name keeps a column of its own."""
    rows = [row(1, [], " default", kind="DEFAULT"),
            row(2, [{"index": 3, "strength": 1.0}], " f3"),
            row(3, [{"index": 7, "strength": 5.0}], " s3", {"steer": "3", "strength_multiplier": 1.0}),
            row(4, [{"index": 1, "strength": 1.0}, {"index": 2, "strength": 1.0}], " f1+2"),
            row(5, [{"index": 8, "strength": 5.0}], " s1+2", {"steer": "1+2", "strength_multiplier": 1.0}),
            row(6, [{"index": 9, "strength": 5.0}], " sD", {"steer": "DEFAULT", "strength_multiplier": 1.0}),
            row(7, [{"index": 9, "strength": 5.0}], " se", {"steer": "steer:3", "strength_multiplier": 1.0})]
    assert [r["feature"] for r in rows] == ["DEFAULT", "3", "steer:3", "1+2", "steer:1+2", "steer:DEFAULT",
                                            "steer:steer:3"]
    grid = results.sweep_grid(rows)
    assert grid["columns"][4:] == ["3", "1+2", "steer:1+2", "steer:3", "steer:DEFAULT", "steer:steer:3"]
    assert grid["rows"] == [["Hi", 1, 1.0, "Hi default", "Hi f3", "Hi f1+2", "Hi s1+2", "Hi s3", "Hi sD", "Hi se"]]
    # serve finds each column's curve (engine.search.curves keys a steer by its name, a feature by its index)
    assert [results.curve_key(c) for c in grid["columns"][4:]] == [3, "1+2", "1+2", "3", "DEFAULT", "steer:3"]
