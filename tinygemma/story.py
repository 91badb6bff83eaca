"""Story prompts for the story page: five choices -> a prompt the model continues, and where the story ends.

The default weights are the pretrained model: it continues text, it does not follow instructions. So its
prompt is a page of a children's story book: one finished example story teaches the shape (title, summary,
story, "The End."), then come the new story's title and summary woven from the choices, and its first
words, "Once upon a time,". Generation stops at "The End", at a new "Title:" or "Summary:" line, at a blank
gap or at the token budget of the chosen length; `finish_story` cuts what came to the last full sentence.

Instruction-tuned weights get the anchor's one sentence through the chat template instead:
"Write a <length> <theme> story about <character> <setting> that <twist>."
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Words per length choice (the anchor's ranges) and the token budget that covers the upper bound.
LENGTHS = {"short": (100, 200), "medium": (200, 300), "long": (300, 400)}
TOKENS_PER_WORD = 1.5          # Gemma's tokenizer on simple English prose: ~1.3; the rest is headroom
CONTINUE_WORDS = 150           # what Continue adds, at most

OPENING = "Once upon a time,"
CONTINUE_OPENING = "The next day,"      # Continue starts a new paragraph: the old story had ended
END_MARKER = "The End"
# "The End" closes a story; a "Title:" or "Summary:" line means a new one has begun; three newlines, a page break.
BASE_STOPS = (END_MARKER, "THE END", "\nTitle:", "\nSummary:", "\n\n\n")

# The example is plain on purpose: a vivid object in it (a red balloon, say) turns up in the model's stories.
EXAMPLE = """\
Bedtime Stories: short stories for children. Each one has a title and a summary, and ends with "The End."

Title: The Little Fox Who Helped
Summary: A kindness story about a little fox in a quiet village who helps a lost duckling. About 120 words.
Story: Once upon a time, a little fox lived at the edge of a quiet village. One windy morning, she heard a \
small voice crying by the pond. It was a duckling who had lost her family in the tall reeds. The fox was \
hungry and tired, but she did not walk away. She walked with the duckling along the water all afternoon, \
asking the frogs and the herons for help. At last, just before sunset, they heard the mother duck calling. \
The duckling ran to her family, and the mother duck thanked the fox again and again. That night the fox \
went to sleep happy, because helping someone had made her day the best one of all.
The End.

"""

_SENTENCE_END = re.compile(r"""[.!?]['"”’)]*""")
_ARTICLE = re.compile(r"^(a|an|the|my|some)\s+", re.IGNORECASE)
_SMALL_WORDS = {"a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "by", "for", "with", "under", "into"}


@dataclass(frozen=True)
class StoryChoices:
    """What the reader picked; each is a short phrase that fits the anchor's sentence."""

    character: str        # "a curious cat"
    setting: str          # "in a magical forest"
    twist: str            # "finds a glowing key" (an object or event)
    theme: str            # "friendship"
    length: str           # "short", "medium" or "long"

    def __post_init__(self):
        if self.length not in LENGTHS:
            raise ValueError(f"length must be one of {', '.join(LENGTHS)}, got {self.length!r}")

    def sentence(self) -> str:
        """The anchor's instruction: 'Write a short funny story about a cat in a forest that finds a key.'"""
        return f"Write a {self.length} {self.theme} story about {self.character} {self.setting} that {self.twist}."


@dataclass(frozen=True)
class StoryPrompt:
    """What to send to the engine: a text prompt (base model) or chat messages (instruction-tuned)."""

    title: str
    text: str | None
    messages: list[dict] | None
    opening: str                  # words the prompt already wrote: they start the text on the page
    max_tokens: int
    stop: tuple[str, ...]


def story_prompt(choices: StoryChoices, instruction_tuned: bool, story_so_far: str = "") -> StoryPrompt:
    """The prompt for a new story, or, with `story_so_far`, for more of the same story (Continue)."""
    low, high = LENGTHS[choices.length]
    words = CONTINUE_WORDS if story_so_far else high
    max_tokens = int(words * TOKENS_PER_WORD)
    story_so_far = story_so_far.strip()
    if instruction_tuned:
        messages = [{"role": "user", "content": choices.sentence()}]
        if story_so_far:
            messages += [{"role": "assistant", "content": story_so_far},
                         {"role": "user", "content": "Continue the story."}]
        return StoryPrompt(title(choices), None, messages, "", max_tokens, ())
    words_hint = (low + high) // 2
    name = title(choices)
    head = (f"{EXAMPLE}Title: {name}\n"
            f"Summary: A {choices.theme} story about {choices.character} {choices.setting} who {choices.twist}. "
            f"About {words_hint} words.\nStory: ")
    if story_so_far:
        return StoryPrompt(name, f"{head}{story_so_far}\n\n{CONTINUE_OPENING}", None, CONTINUE_OPENING,
                           max_tokens, BASE_STOPS)
    return StoryPrompt(name, head + OPENING, None, OPENING, max_tokens, BASE_STOPS)


def title(choices: StoryChoices) -> str:
    """'a curious cat' + 'in a magical forest' -> 'The Curious Cat in a Magical Forest'."""
    words = f"{_ARTICLE.sub('', choices.character.strip())} {choices.setting.strip()}".split()
    titled = [w if (i and w.lower() in _SMALL_WORDS) else w[:1].upper() + w[1:] for i, w in enumerate(words)]
    return "The " + " ".join(titled)


def finish_story(text: str) -> str:
    """The story as shown at the end: cut to its last full sentence, blank runs squeezed, no end marker."""
    text = text.replace(END_MARKER, "").replace("THE END", "")
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    ends = list(_SENTENCE_END.finditer(text))
    return text[:ends[-1].end()] if ends else text
