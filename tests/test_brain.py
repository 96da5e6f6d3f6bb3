"""The offline technician's dialog: scripted conversations through HelpdeskBrain.

The brain runs on the real articles and the real embedding retriever, so these dialogs also show
that the retrieval decisions it depends on ("I can't connect to the network" is ambiguous) hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.localmodel.brain import SPOKEN_TOPICS, HelpdeskBrain, Reply, ToolCall, spoken_topic
from app.localmodel.embed import EncoderError, MiniLMEncoder
from app.localmodel.retrieval import ArticleRetriever
from app.tools.kb import KeywordIndex, default_kb_dir, load_articles
from app.tools.registry import ToolRegistry, validate_arguments
from app.tools.tickets import (
    CATEGORIES,
    CREATE_TICKET_PARAMETERS,
    URGENCIES,
    TicketOutbox,
    create_ticket_tool,
)

ARTICLES, _ = load_articles(default_kb_dir())
BY_ID = {article.id: article for article in ARTICLES}
PASSWORD = BY_ID["password-reset"]


@pytest.fixture(scope="module")
def retriever() -> Iterator[ArticleRetriever]:
    try:
        encoder = MiniLMEncoder()
    except EncoderError as exc:
        pytest.skip(f"the MiniLM model is not available: {exc}")
    yield ArticleRetriever(ARTICLES, encoder, KeywordIndex(ARTICLES))


@pytest.fixture
def brain(retriever: ArticleRetriever) -> HelpdeskBrain:
    return HelpdeskBrain(retriever, can_create_tickets=True)


def _step_text(article_id: str, number: int) -> str:
    return BY_ID[article_id].steps[number - 1]


def _assert_step(reply: Reply, article_id: str, number: int) -> None:
    assert reply.article_id == article_id and reply.step == number, reply
    assert _step_text(article_id, number) in reply.text, reply.text
    assert reply.tool_call is None


def _assert_valid_ticket(call: ToolCall | None) -> ToolCall:
    assert call is not None
    assert call.name == "create_ticket" and re.fullmatch(r"call_\d+", call.call_id)
    assert validate_arguments(call.arguments, CREATE_TICKET_PARAMETERS) == []
    assert call.arguments["category"] in CATEGORIES and call.arguments["urgency"] in URGENCIES
    assert len(call.arguments["summary"]) <= 200
    return call


# ---------------------------------------------------------------------------------------------------
# Walking through an article
# ---------------------------------------------------------------------------------------------------


def test_password_reset_walkthrough(brain: HelpdeskBrain) -> None:
    first = brain.reply("Hi, I've forgotten my password and now I can't get into my laptop.")
    _assert_step(first, "password-reset", 1)
    assert first.text.startswith("Okay, let's look at resetting your password.")
    assert "Step 1 of 6" in first.text and first.text.endswith("Tell me when you've done that.")

    _assert_step(brain.reply("done"), "password-reset", 2)
    _assert_step(brain.reply("that didn't work"), "password-reset", 3)
    back = brain.reply("go back")
    _assert_step(back, "password-reset", 2)
    assert back.text.startswith("Sure, going back.")
    again = brain.reply("repeat that")
    _assert_step(again, "password-reset", 2)
    _assert_step(brain.reply("What?"), "password-reset", 2)
    _assert_step(brain.reply("ok next"), "password-reset", 3)

    stopped = brain.reply("stop")
    assert stopped.article_id is None and stopped.step is None and "stop" in stopped.text.lower()
    assert brain.state == "idle"
    assert "Hi" in brain.reply("hello").text  # back to a fresh start


@pytest.mark.parametrize(
    "utterance", ["that didnt work", "No.", "nope", "still broken", "it's still not working", "no luck"]
)
def test_failure_phrasings_move_on(brain: HelpdeskBrain, utterance: str) -> None:
    brain.reply("I need to reset my password")
    _assert_step(brain.reply(utterance), "password-reset", 2)


@pytest.mark.parametrize(
    "utterance", ["it worked.", "that worked!", "fixed", "it's working now", "sorted, thanks"]
)
def test_success_phrasings_close_warmly(brain: HelpdeskBrain, utterance: str) -> None:
    brain.reply("I need to reset my password")
    closing = brain.reply(utterance)
    assert closing.step is None and "glad" in closing.text.lower() and "anything else" in closing.text.lower()
    assert brain.reply("no thanks").text == "Alright. Have a good day!"


def test_yes_means_it_worked_only_after_did_that_work(brain: HelpdeskBrain) -> None:
    brain.reply("I need to reset my password")
    _assert_step(brain.reply("yes"), "password-reset", 2)  # after "Tell me when you've done that."
    for number in (3, 4, 5):
        _assert_step(brain.reply("ok"), "password-reset", number)
    assert brain.reply("").text.startswith("Sorry, I didn't catch")  # silence changes nothing
    assert _step_text("password-reset", 5).startswith("Sign in")  # a step with a visible outcome...
    assert brain.reply("repeat").text.endswith("Did that work?")  # ...so the question changes
    assert "glad" in brain.reply("yes").text.lower()


def test_back_at_the_first_step_and_wait(brain: HelpdeskBrain) -> None:
    brain.reply("I need to reset my password")
    first = brain.reply("previous step")
    _assert_step(first, "password-reset", 1)
    assert first.text.startswith("That's the first step.")
    waiting = brain.reply("wait")
    assert waiting.text.startswith("Sure, take your time") and waiting.step is None
    _assert_step(brain.reply("done"), "password-reset", 2)  # the walkthrough is still there


def test_a_new_problem_mid_walkthrough_switches_article(brain: HelpdeskBrain) -> None:
    brain.reply("I need to reset my password")
    switched = brain.reply("actually forget that, my printer has a paper jam and won't print")
    _assert_step(switched, "printer-not-printing", 1)


# ---------------------------------------------------------------------------------------------------
# Unsure retrieval: a clarifying question
# ---------------------------------------------------------------------------------------------------


def test_ambiguity_is_resolved_by_name(brain: HelpdeskBrain) -> None:
    question = brain.reply("I can't connect to the network")
    assert question.tool_call is None and question.step is None
    assert question.text.startswith("Is this about ") and question.text.endswith("?")
    assert "your VPN" in question.text and "the Wi-Fi" in question.text
    _assert_step(brain.reply("the vpn"), "vpn-connection-drops", 1)


@pytest.mark.parametrize(
    ("answer", "position"), [("the first one", 0), ("the second one", 1), ("wifi", None)]
)
def test_ambiguity_is_resolved_by_position_or_name(
    brain: HelpdeskBrain, answer: str, position: int | None
) -> None:
    question = brain.reply("I can't connect to the network").text
    named = [article_id for article_id in ("wifi-not-connecting", "vpn-connection-drops")]
    order = sorted(named, key=lambda article_id: question.index(SPOKEN_TOPICS[article_id]))
    expected = order[position] if position is not None else "wifi-not-connecting"
    _assert_step(brain.reply(answer), expected, 1)


def test_unclear_answers_ask_again_and_neither_asks_for_more(brain: HelpdeskBrain) -> None:
    question = brain.reply("I can't connect to the network").text
    again = brain.reply("hmm")
    assert again.text.startswith("Sorry, which one?") and again.text.endswith(question)
    assert brain.reply("say that again").text == question
    assert "more" in brain.reply("neither").text
    _assert_step(brain.reply("my vpn client keeps disconnecting from home"), "vpn-connection-drops", 1)


# ---------------------------------------------------------------------------------------------------
# Tickets
# ---------------------------------------------------------------------------------------------------


def test_steps_run_out_then_ticket_then_read_back(brain: HelpdeskBrain) -> None:
    _assert_step(
        brain.reply("my vpn keeps dropping and it's urgent, I can't work"), "vpn-connection-drops", 1
    )
    total = len(BY_ID["vpn-connection-drops"].steps)
    for number in range(2, total + 1):
        _assert_step(brain.reply("no, still dropping"), "vpn-connection-drops", number)
    offer = brain.reply("didn't help")
    assert "ticket" in offer.text and offer.text.endswith("?") and brain.state == "offer_ticket"

    filing = brain.reply("yes please")
    call = _assert_valid_ticket(filing.tool_call)
    assert call.arguments["category"] == "network" and call.arguments["urgency"] == "high"
    assert call.arguments["summary"].startswith("VPN disconnects or will not connect")
    assert f"step {total} of {total}" in call.arguments["description"]
    assert "my vpn keeps dropping" in call.arguments["description"].lower()
    assert brain.reply("hello?").text.startswith("I'm creating the ticket")  # still waiting for it

    assert brain.tool_result("call_999", {"ticket_id": "HD-9999"}).text == ""  # not ours: ignored
    done = brain.tool_result(call.call_id, {"ticket_id": "HD-1042", "status": "queued"})
    assert done.text.startswith("I've created ticket HD-1042. Someone from IT will contact you.")
    assert brain.tool_result(call.call_id, {"ticket_id": "HD-1042"}).text == ""  # answered once only


def test_ticket_on_request_asks_for_a_description(brain: HelpdeskBrain) -> None:
    ask = brain.reply("can you log a ticket for me")
    assert ask.tool_call is None and "what's the problem" in ask.text.lower()
    filing = brain.reply("the docking station on my desk smells of burning")
    call = _assert_valid_ticket(filing.tool_call)
    assert "docking station" in call.arguments["description"]
    assert call.arguments["category"] == "hardware"  # found through the article, without walking it
    assert call.arguments["urgency"] == "normal"


def test_ticket_with_the_problem_in_the_same_breath(brain: HelpdeskBrain) -> None:
    filing = brain.reply("please raise a ticket, the app we use for invoices crashes on startup, asap")
    call = _assert_valid_ticket(filing.tool_call)
    assert call.arguments["urgency"] == "high" and "invoices" in call.arguments["description"]


def test_escalate_mid_walkthrough_files_what_is_known(brain: HelpdeskBrain) -> None:
    brain.reply("my laptop is really slow today")
    brain.reply("done")
    call = _assert_valid_ticket(brain.reply("just escalate it").tool_call)
    assert call.arguments["category"] == BY_ID["slow-laptop"].category
    assert "step 2 of" in call.arguments["description"]


def test_call_ids_are_unique(brain: HelpdeskBrain) -> None:
    first = _assert_valid_ticket(
        brain.reply("create a ticket: my badge does not open the car park").tool_call
    )
    brain.tool_result(first.call_id, {"ticket_id": "HD-1001"})
    second = _assert_valid_ticket(brain.reply("log another ticket, the kitchen tv is broken").tool_call)
    assert first.call_id != second.call_id


def test_tool_error_apologises_and_says_what_to_do(brain: HelpdeskBrain) -> None:
    brain.reply("my vpn keeps dropping")
    call = _assert_valid_ticket(brain.reply("create a ticket").tool_call)
    error = {
        "error": {"type": "ticket_not_saved", "message": "The ticket could not be saved on this computer."}
    }
    reply = brain.tool_result(call.call_id, error)
    assert reply.text.startswith("Sorry, I couldn't create the ticket.")
    assert "service desk" in reply.text and "VPN" in reply.text and reply.tool_call is None


def test_without_a_ticket_tool_the_user_is_sent_to_the_service_desk(retriever: ArticleRetriever) -> None:
    brain = HelpdeskBrain(retriever, can_create_tickets=False)
    brain.reply("my vpn keeps dropping")
    reply = brain.reply("create a ticket")
    assert reply.tool_call is None and "can't create tickets" in reply.text and "service desk" in reply.text

    unknown = brain.reply("the coffee machine display shows error 42")
    assert unknown.tool_call is None and "service desk" in unknown.text

    brain.reply("my printer is jammed")
    for _ in BY_ID["printer-not-printing"].steps:
        last = brain.reply("no")
    assert last.tool_call is None and "service desk" in last.text and "ticket" in last.text


def test_a_step_that_says_raise_a_ticket_offers_one(brain: HelpdeskBrain) -> None:
    article = BY_ID["broken-screen-keyboard"]
    ticket_step = next(index for index, step in enumerate(article.steps, 1) if "ticket" in step.lower())
    _assert_step(brain.reply("I dropped my laptop and the screen cracked"), article.id, 1)
    for number in range(2, ticket_step + 1):
        reply = brain.reply("done")
        _assert_step(reply, article.id, number)
    assert reply.text.endswith("Shall I create that ticket for you now?")
    call = _assert_valid_ticket(brain.reply("yes").tool_call)
    assert call.arguments["category"] == "hardware"


async def test_ticket_through_the_real_tool(brain: HelpdeskBrain, tmp_path: Path) -> None:
    registry = ToolRegistry([create_ticket_tool(TicketOutbox(tmp_path))])
    brain.reply("Outlook hasn't downloaded any new mail since this morning")
    reply = brain.reply("could you raise a ticket")
    if reply.tool_call is None:  # retrieval asked which article first: answer it
        reply = brain.reply("the first one")
        reply = brain.reply("raise a ticket")
    call = _assert_valid_ticket(reply.tool_call)
    result = await registry.run(call.name, json.dumps(call.arguments))
    assert result.ok, result.output
    spoken = brain.tool_result(call.call_id, result.output)
    ticket_id = result.output["ticket_id"]
    assert spoken.text.startswith(f"I've created ticket {ticket_id}.")
    stored = json.loads((tmp_path / f"{ticket_id}.json").read_text(encoding="utf-8"))
    assert stored["summary"] == call.arguments["summary"] and stored["category"] == "email"


def test_declining_the_ticket(brain: HelpdeskBrain) -> None:
    offer = brain.reply("the coffee machine display shows error 42")
    assert "don't have a guide" in offer.text and "ticket" in offer.text and offer.tool_call is None
    declined = brain.reply("no thanks")
    assert declined.tool_call is None and "no ticket" in declined.text.lower()


def test_nothing_matches_then_accepting_the_ticket(brain: HelpdeskBrain) -> None:
    brain.reply("the coffee machine display shows error 42")
    call = _assert_valid_ticket(brain.reply("yes").tool_call)
    assert call.arguments["category"] == "other" and "coffee machine" in call.arguments["summary"].lower()


# ---------------------------------------------------------------------------------------------------
# Small talk
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("utterance", "expected"),
    [
        ("hello", "What can I help you with"),
        ("Good morning!", "What can I help you with"),
        ("thanks", "You're welcome"),
        ("how are you?", "What IT problem can I help you with"),
        ("who are you", "IT helpdesk assistant"),
        ("tell me a joke", "What can I help you with"),
        ("um hi i need some help", "What's going wrong"),
        ("bye", "Bye"),
    ],
)
def test_small_talk(brain: HelpdeskBrain, utterance: str, expected: str) -> None:
    reply = brain.reply(utterance)
    assert expected in reply.text and reply.tool_call is None and reply.article_id is None
    assert len(reply.text) < 160  # short, spoken


def test_greeting_with_a_problem_goes_straight_to_it(brain: HelpdeskBrain) -> None:
    assert brain.greeting().text.startswith("Hi")
    _assert_step(brain.reply("hey there, my webcam isn't working"), "webcam-not-working", 1)


def test_spoken_text_has_no_long_urls(brain: HelpdeskBrain) -> None:
    replies = [brain.reply("I need to reset my password")]
    replies += [brain.reply("done") for _ in PASSWORD.steps]
    for reply in replies:
        assert "http" not in reply.text and "www." not in reply.text
        for host in re.findall(r"\b[\w.-]+\.(?:com|net|org)\b", reply.text):
            assert host.count(".") <= 2, host


def test_every_article_has_a_spoken_topic() -> None:
    assert set(SPOKEN_TOPICS) == set(BY_ID)
    for article in ARTICLES:
        topic = spoken_topic(article)
        assert 3 <= len(topic) <= 40 and not topic.endswith(".")
