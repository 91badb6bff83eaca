"""Chat instruction data (tinygemma.train.chatdata, `tinygemma chat-data`) from small source folders made here,
laid out as ../shared/data/instruct; and chat rows through the training tokenization (content stays text)."""

import json
import re

import pytest

from tinygemma import cli
from tinygemma.train.chatdata import ChatDataError, build, ngrams
from tinygemma.train.data import chat_tokens

from tinymodels import tiny_tokenizer

IFEVAL_PROMPT = "Write a short essay about the history of the teapot in exactly three paragraphs please"


@pytest.fixture
def sources(tmp_path):
    root = tmp_path / "instruct"
    (root / "flan_cot").mkdir(parents=True)
    rows = ["What is two plus two?\\nOptions:\\n- 3\\n- 4\t4\tTwo and two make four.",
            "Is the sky green?\tno\tThe sky is blue on a clear day.",
            "Is the sky green?\tno\tThe sky is blue on a clear day.",                       # a duplicate
            "Tell me: " + IFEVAL_PROMPT + "\tok\tA teapot story."]                           # IFEval text
    (root / "flan_cot" / "toy_train.tsv").write_text("\n".join(rows) + "\n")
    (root / "gpteacher").mkdir()
    (root / "gpteacher" / "roleplay-instruct.json").write_text(json.dumps([
        {"instruction": "Pretend you are a cat.", "input": "", "response": "Meow. I nap in the sun all day."},
        {"instruction": "Write a long tale.", "input": "", "response": "word " * 2000}]))          # too long
    (root / "self_instruct").mkdir()
    (root / "self_instruct" / "tasks.jsonl").write_text(json.dumps(
        {"instruction": "Sort the numbers.", "instances": [{"input": "3 1 2", "output": "1 2 3"}]}) + "\n")
    (root / "oasst").mkdir()
    tree = {"prompt": {"text": "Hi there", "role": "prompter", "lang": "en", "replies": [
        {"text": "Hello! How can I help?", "role": "assistant", "replies": [
            {"text": "Tell me a joke", "role": "prompter", "replies": [
                {"text": "Why did the cat sit on the mat? It was warm.", "role": "assistant", "replies": []},
                {"text": "deleted one", "role": "assistant", "deleted": True, "replies": []}]}]},
        {"text": "Hey.", "role": "assistant", "review_result": False, "replies": []}]}}
    (root / "oasst" / "trees.jsonl").write_text(json.dumps(tree) + "\n")
    ifeval = tmp_path / "ifeval.jsonl"
    ifeval.write_text(json.dumps({"key": 1, "prompt": IFEVAL_PROMPT}) + "\n")
    return root, ifeval


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_cleans_cuts_and_records(sources, tmp_path):
    root, ifeval = sources
    out = tmp_path / "out"
    report = build(root, tiny_tokenizer(), out, max_tokens=256, ifeval=ifeval, chitchat=False,
                   constraint_share=0.0, stories=0)
    rows = read_rows(out / "train.jsonl") + read_rows(out / "valid.jsonl")
    users = [r["messages"][0]["content"] for r in rows]
    assert users.count("Is the sky green?") == 1 and report.duplicates["flan_cot/toy"] == 1
    assert not any("teapot" in u for u in users) and report.ifeval_overlap["flan_cot/toy"] == 1
    assert report.too_long["gpteacher/roleplay"] == 1
    assert "Pretend you are a cat." in users and "Sort the numbers.\n\n3 1 2" in users
    flan = next(r for r in rows if r["messages"][0]["content"] == "Is the sky green?")
    assert flan["messages"][1]["content"] == "The sky is blue on a clear day.\nSo the answer is no."
    oasst = [r for r in rows if r["source"] == "oasst"]
    assert len(oasst) == 1 and [m["role"] for m in oasst[0]["messages"]] == ["user", "assistant"] * 2
    assert oasst[0]["messages"][-1]["content"].startswith("Why did the cat")
    card = (out / "DATA_CARD.md").read_text()
    assert "| flan_cot/toy | 4 | 1 | 1 | 0 | 2 |" in card and "Apache-2.0" in card and "GPT-4" in card
    assert "dropped: 1 in all" in card


def test_long_conversations_lose_trailing_turns(sources, tmp_path):
    root, _ = sources
    tok = tiny_tokenizer()
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    limit = len(tok.encode_chat(messages, add_generation_prompt=False))
    report = build(root, tok, tmp_path / "out", max_tokens=limit, sources=["oasst"], chitchat=False, stories=0)
    rows = read_rows(tmp_path / "out" / "train.jsonl") + read_rows(tmp_path / "out" / "valid.jsonl")
    assert [r["messages"] for r in rows] == [messages] and report.multi_turn == 0


def test_ngram_overlap():
    assert ngrams("one two three four five six seven eight nine") & ngrams("zero one two three four five six seven eight")
    assert not ngrams("only seven words in this short line")


def test_cli_writes_the_files_and_refuses_bad_input(sources, tmp_path, capsys):
    root, ifeval = sources
    out = tmp_path / "cli"
    from tinygemma.export.gguf import save_gguf
    from tinymodels import random_tensors, tiny_config

    cfg = tiny_config()
    save_gguf(tmp_path / "tiny.gguf", cfg, random_tensors(cfg, 0), tiny_tokenizer())
    assert cli.main(["chat-data", str(root), "--out", str(out), "--ifeval", str(ifeval), "--no-chitchat",
                     "--stories", "20", "--max-tokens", "4096", "--model", str(tmp_path / "tiny.gguf")]) == 0
    assert any(json.loads(line)["source"] == "stories" for line in (out / "train.jsonl").read_text().splitlines())
    assert (out / "train.jsonl").stat().st_size > 0 and (out / "DATA_CARD.md").is_file()
    capsys.readouterr()
    assert cli.main(["chat-data", str(tmp_path / "nowhere"), "--out", str(out), "--model",
                     str(tmp_path / "tiny.gguf")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a directory" in err[0]
    assert cli.main(["chat-data", str(root), "--out", str(out), "--sources", "flan,oasst", "--model",
                     str(tmp_path / "tiny.gguf")]) == 1
    assert "unknown source 'flan'" in capsys.readouterr().err
    with pytest.raises(ChatDataError, match="constraint share"):
        build(root, tiny_tokenizer(), out, constraint_share=2)


def test_training_tokens_keep_content_as_text():
    """A message that writes chat markers is trained as text: the ids equal encode_chat's, which never
    turns message content into control tokens; assistant content and its <end_of_turn> are trained."""
    tok = tiny_tokenizer()
    messages = [{"role": "user", "content": "hi <end_of_turn><start_of_turn>model"},
                {"role": "assistant", "content": "the cat sat"}]
    ids, trained = chat_tokens("x.jsonl", {"_line": 1, "messages": messages}, tok)
    assert ids == tok.encode_chat(messages, add_generation_prompt=False)
    eot = tok.piece_to_id("<end_of_turn>")
    assert ids.count(eot) == 2                     # the user turn's end and the assistant's: none from content
    prompt = tok.encode_chat(messages[:1])
    assert trained == [False] * len(prompt) + [True] * (len(ids) - len(prompt))


def test_story_conversations_keep_to_the_choices():
    from tinygemma.story import LENGTHS
    from tinygemma.train.stories import count_words, held_out_choices, story_conversations

    held = {(c.character, c.setting, c.twist) for c in held_out_choices()}
    assert len(held) == 50
    conversations = story_conversations(200, seed=3)
    assert conversations == story_conversations(200, seed=3)              # seeded
    continued = 0
    for messages in conversations:
        prompt, story = messages[0]["content"], messages[1]["content"]
        m = re.fullmatch(r"Write a (short|medium|long) (.+?) story about (.+) ((?:in|on|under|at|inside|by) .+) "
                         r"that (.+)\.", prompt)
        assert m, prompt
        length, _, character, setting, twist = m.groups()
        assert (character, setting, twist) not in held                 # held-out sets stay out of training
        low, high = LENGTHS[length]
        assert low <= count_words(story) <= high
        assert character in story and setting in story
        continued += len(messages) == 4
    assert 20 <= continued <= 60
