"""Cascade-consistent ranker data: a ranker's extra negatives come from what the declared
funnel hands it (models.cascade), whichever sources and rankers are declared."""
import numpy as np

from recfunnel.models.cascade import CANDIDATES, StageView, stage_before, stage_negatives
from recfunnel.models.data import Splits
from recfunnel.models.features import OFFLINE_FEATURES
from recfunnel.models.funnel import FunnelSettings

EASE_THEN_HEAVY = FunnelSettings(sources=[{"name": "ease", "share": 1.0}],
                                 rankers=[{"name": "heavy_ranker"}], candidates_k=60,
                                 selector="fusion", selector_params={"input_weight": 0.7})


def test_the_stage_before_each_ranker_is_the_declared_funnel_cut_there():
    chain = FunnelSettings(rankers=[{"name": "light_ranker", "keep": 40},
                                    {"name": "heavy_ranker"}], candidates_k=300)
    before_light, stage = stage_before(chain, "light_ranker")
    assert stage == CANDIDATES and before_light.rankers == [] and before_light.k == 300
    before_heavy, stage = stage_before(chain, "heavy_ranker")
    assert stage == "light_ranker" and before_heavy.ranker_names == ["light_ranker"]
    assert before_heavy.k == 40
    # a ranker the funnel does not declare would rank the candidates: EASE's, here
    before_light, stage = stage_before(EASE_THEN_HEAVY, "light_ranker")
    assert stage == CANDIDATES and before_light.sources == EASE_THEN_HEAVY.sources
    assert stage_before(EASE_THEN_HEAVY, "heavy_ranker")[0].k == 60


def test_heavy_negatives_come_from_ease_when_the_funnel_declares_ease_then_heavy(small_run):
    splits = Splits.load(small_run.dir / "dataset")
    view = StageView(small_run.version_dir, OFFLINE_FEATURES, EASE_THEN_HEAVY, "heavy_ranker")
    assert view.stage == CANDIDATES and view.width == 60
    negatives = stage_negatives(splits.train, view, 1.0, small_run.dir / "dataset", seed=3)
    assert len(negatives) > 0 and (negatives["click"] == 0).all()
    assert (negatives["sampled_negative"] == 1).all()
    assert list(negatives.columns) == [c for c in splits.train.columns if c in negatives.columns]
    users = np.unique(negatives["user_id_raw"].to_numpy(np.int64))
    touched = splits.train.groupby("user_id_raw")["item_id_raw"].apply(np.asarray)
    lists, known = view.lists(users, [touched[u] for u in users])
    assert known.all()
    for user, items in negatives.groupby("user_id_raw")["item_id_raw"]:
        row = lists[np.searchsorted(users, user)]
        assert set(items) <= set(row[row >= 0])          # drawn from EASE's top 60 only
        assert not set(items) & set(touched[user])       # never an item the user has a row with
    assert lists.shape == (len(users), 60)
