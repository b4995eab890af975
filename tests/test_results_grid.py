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
