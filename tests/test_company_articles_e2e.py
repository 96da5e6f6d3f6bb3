"""The company's own article, dropped in by policy, walked through by voice through the whole app.

The site policy names a folder with one free-form Markdown article (no ``## Steps`` list); the
headless app with its offline assistant hears a request about it through the virtual microphone,
answers with the article's first step of three (the transcript citing it with its link), and on a
spoken "done" goes on to the next one.
"Done" alone is a hard word for the recogniser: it is heard with the step the user was just asked to
finish as its context (:mod:`app.localmodel.asr`). An article added to the folder while the app runs
is answered by voice without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.audio.devices import find_device
from app.audio.resample import FloatArray
from app.testkit.rig import VirtualAudioRig
from tests.app_driver import HeadlessApp, speak, start_on_rig

pytestmark = pytest.mark.devices

ARTICLE = """\
# The coffee machine in the kitchen shows an error

When the coffee machine in the kitchen shows a red light, it usually needs one of three things.

1. Empty the grounds drawer at the front of the coffee machine and push it back until it clicks.
2. Fill the water tank at the back of the machine up to the line.
3. Switch the coffee machine off at the side, wait ten seconds and switch it on again.

If the red light stays on, tell facilities.
"""


def _app_with_articles(
    virtual_audio: VirtualAudioRig, tmp_path: Path, *args: str
) -> tuple[HeadlessApp, Path]:
    """The headless app on the virtual devices, its site policy naming a folder with ARTICLE in it."""
    articles = tmp_path / "company-articles"
    articles.mkdir()
    (articles / "kitchen-coffee.md").write_text(ARTICLE, encoding="utf-8")
    policy = tmp_path / "policy" / "policy.toml"
    policy.parent.mkdir()
    policy.write_text(f'[kb]\nfolders = ["{articles}"]\n', encoding="utf-8")
    env: dict[str, str | None] = {
        "HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data"),
        "HELPDESK_VOICE_POLICY": str(policy),
        "HELPDESK_VOICE_CONFIG_DIR": str(tmp_path / "user"),
    }
    return start_on_rig(virtual_audio, env, *args), articles


def test_a_company_article_named_by_policy_is_walked_through_by_voice(
    virtual_audio: VirtualAudioRig,
    speech: Callable[[str, int], FloatArray],
    tmp_path: Path,
) -> None:
    app, articles = _app_with_articles(virtual_audio, tmp_path)
    feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
    try:
        app.wait_for(lambda line: line.startswith("listening on"), 180)
        time.sleep(0.8)
        speak(virtual_audio, speech("the coffee machine in the kitchen shows a red light", feed_rate))
        first = app.wait_for(lambda line: line.startswith("assistant:") and "grounds drawer" in line, 60)
        # The transcript cites the article by title with its link, after the answer that named it.
        cited = app.wait_for(
            lambda line: "Article: The coffee machine in the kitchen" in line, 30, stderr=True
        )
        time.sleep(1.0)
        speak(virtual_audio, speech("done", feed_rate))
        second = app.wait_for(lambda line: line.startswith("assistant:") and "water tank" in line, 60)
    finally:
        app.stop()
    assert "Step 1 of 3" in first and "water tank" not in first  # one step at a time
    assert "Step 2 of 3" in second and "grounds drawer" not in second
    assert cited.endswith((articles / "kitchen-coffee.md").resolve().as_uri())


PROJECTOR = """\
# The projector in meeting room four shows no picture

1. Press the Input button on the remote until the screen says HDMI 1.
2. Check that the cable is pushed all the way into the laptop.
"""


def test_an_article_added_while_the_app_runs_is_answered_by_voice(
    virtual_audio: VirtualAudioRig,
    speech: Callable[[str, int], FloatArray],
    tmp_path: Path,
) -> None:
    # -v: the log says when the offline server has taken in the changed folder.
    app, articles = _app_with_articles(virtual_audio, tmp_path, "-v")
    feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
    try:
        app.wait_for(lambda line: line.startswith("listening on"), 180)
        # The admin publishes a new article while the assistant runs: no restart.
        (articles / "projector.md").write_text(PROJECTOR, encoding="utf-8")
        app.wait_for(lambda line: "the company's articles changed" in line, 60, stderr=True)
        speak(virtual_audio, speech("the projector in meeting room four shows no picture", feed_rate))
        answer = app.wait_for(lambda line: line.startswith("assistant:") and "Input button" in line, 60)
    finally:
        app.stop()
    assert "Step 1 of 2" in answer
