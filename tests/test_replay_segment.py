"""A run over the loopback OpenAI-compatible server, replayed from its audit store with the server gone.

The replay names no ``--base-url``: the recorded self-hosted model needs no price to be replayed.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image
from stage_support import core_slide_pixels

from tissue_oracle.agent.cmd_segment import run_segment
from tissue_oracle.agent.run_settings import RunSettings
from tissue_oracle.bench.fakes.fixtures import MODELS, start_server
from tissue_oracle.policies.policy import load_policy


def _paid_calls(db: Path) -> int:
    with duckdb.connect(str(db), read_only=True) as conn:
        row = conn.execute("SELECT count(*) FROM calls WHERE NOT cache_hit").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
def test_replay_without_base_url_gives_the_same_mask_and_pays_nothing(tmp_path: Path) -> None:
    image, _ = core_slide_pixels()
    slides = tmp_path / "slides"
    slides.mkdir()
    Image.fromarray(image).save(slides / "cores.png")
    policy = load_policy("default").with_updates(
        {"classify.patch_size": 256, "classify.send_size": 128, "review.crop_size": 512}
    )
    spec = f"openai:{MODELS['openai']}"
    server = start_server("openai")
    try:
        live = run_segment(
            [str(slides)],
            RunSettings(run_id="live", policy=policy, out_dir=tmp_path / "live"),
            overrides={"oracle": spec, "classifier": spec, "reviewer": "classical"},
            base_urls=[server.base_url],
            show_progress=False,
        )
    finally:
        server.stop()
    assert live.count("failed") == 0
    assert _paid_calls(tmp_path / "live" / "audit.duckdb") > 0

    replay = f"replay:{tmp_path / 'live' / 'audit.duckdb'}"
    again = run_segment(
        [str(slides)],
        RunSettings(run_id="replayed", policy=policy, out_dir=tmp_path / "replayed"),
        overrides={"oracle": replay, "classifier": replay, "reviewer": replay},
        show_progress=False,
    )
    assert again.count("failed") == 0
    assert _paid_calls(tmp_path / "replayed" / "audit.duckdb") == 0
    first = np.load(tmp_path / "live" / "cores" / "mask.npy")
    second = np.load(tmp_path / "replayed" / "cores" / "mask.npy")
    np.testing.assert_array_equal(first, second)
