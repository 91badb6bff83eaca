"""Story-page training conversations: the page's prompt for a set of choices, answered by a story that keeps to
them (names the character and the setting, tells the twist, fits the theme, lands inside the requested word
range and ends by itself).

No teacher model is available here, so the answers are composed from hand-written sentence banks with the
choices slotted in: plain, grammatical children's stories whose *shape* is what the model should learn (the
270M model supplies variety of its own at sampling time). Training choice sets are drawn from the page's cards
plus extra characters, settings and twists (the page takes free text); `held_out_choices` gives fixed sets
that never occur in training, for the compliance evaluation.
"""

from __future__ import annotations

import random
import re

from ..story import LENGTHS, StoryChoices, story_prompt

CHARACTERS = ["a curious cat", "a friendly robot", "a little dragon", "a wise owl", "a tiny fairy",
              "a young astronaut", "a sleepy bear", "a clever fox"]
SETTINGS = ["in a magical forest", "on a distant planet", "under the sea", "in an old castle", "in a busy city",
            "in a land made of candy", "at the snowy North Pole", "on a tiny island"]
TWISTS = ["finds a glowing key", "discovers a secret map", "finds a mysterious egg", "follows a rainbow",
          "catches a falling star", "finds a magic hat", "gets caught in a big storm", "receives a surprise gift"]
THEMES = ["friendship", "adventure", "funny", "mystery", "calm bedtime", "courage", "magical", "kindness"]
# Free-text choices beyond the cards (the page accepts any words).
EXTRA_CHARACTERS = ["a shy penguin", "a brave mouse", "a gentle giant", "a lonely snail", "a curious puppy",
                    "a little robot vacuum", "an old tortoise", "a cheerful frog", "a young knight", "a tiny turtle",
                    "a sleepy koala", "a kind witch", "a playful otter", "a clumsy unicorn", "a quiet hedgehog",
                    "a busy beaver", "a little cloud", "a small lighthouse keeper", "a baby elephant",
                    "a bold parrot"]
EXTRA_SETTINGS = ["in a lighthouse", "in a quiet village", "on a pirate ship", "in a snowy mountain town",
                  "in a big library", "inside a giant teapot", "in a sunny meadow", "on the moon",
                  "in a busy bakery", "in a hidden cave", "at a noisy train station", "in a cloud kingdom",
                  "in a desert oasis", "in a toy shop", "by a sleepy river", "in a jungle full of birds"]
EXTRA_TWISTS = ["learns to whistle", "meets a talking tree", "loses a favourite scarf", "builds a tiny boat",
                "hears a strange song", "opens a secret door", "finds a lost puppy", "plants a magic seed",
                "wins a baking contest", "sees a shooting star", "finds a golden feather", "makes a new friend",
                "discovers a hidden garden", "finds a message in a bottle", "meets a lonely ghost"]

_PAST = {"finds": "found", "discovers": "discovered", "follows": "followed", "catches": "caught", "gets": "got",
         "receives": "received", "learns": "learned", "meets": "met", "loses": "lost", "builds": "built",
         "hears": "heard", "opens": "opened", "plants": "planted", "wins": "won", "sees": "saw",
         "makes": "made", "goes": "went", "visits": "visited", "helps": "helped", "takes": "took"}

OPENINGS = ["Once upon a time, {a} lived {setting}.", "Once upon a time, {setting}, there lived {a}.",
            "Once upon a time, {a} made a home {setting}."]
PLACE = ["Every morning, {the} walked around and said hello to everyone nearby.",
         "{The_} loved this place, with all its sounds and colours.",
         "Life {setting} was usually calm, and {the} liked it that way.",
         "{The_} knew every corner of the place, or so it seemed.",
         "Each day brought something small and new for {the} to notice."]
TWIST = ["One day, {the} {past}.", "Then, on a day that started like any other, {the} {past}.",
         "But one afternoon, something surprising happened: {the} {past}."]
AFTER = ["{The_} could hardly believe it.", "At first, {the} did not know what to do.",
         "{The_} stopped and thought very carefully.", "It was the strangest thing that had ever happened there."]
MIDDLE = {
    "friendship": ["{The_} asked a neighbour for help, and together they made a plan.",
                   "Working side by side, the two of them laughed and shared their ideas.",
                   "{The_} learned that a problem feels smaller when a friend is near.",
                   "Soon more friends came along to help, one after another."],
    "adventure": ["{The_} packed a small bag and set off to see where it would lead.",
                  "The path went over hills and past places {the} had never seen.",
                  "Every step felt like the start of something big.",
                  "When the way grew hard, {the} kept going, one step at a time."],
    "funny": ["Everything went wrong in the silliest way, and {the} could not stop giggling.",
              "A hat flew off, a shoe fell in a puddle, and a duck quacked very loudly.",
              "{The_} tried to look serious, but it only made things funnier.",
              "Even the grumpiest neighbour burst out laughing."],
    "mystery": ["There were clues everywhere, if you knew where to look.",
                "{The_} followed a trail of tiny footprints and strange marks.",
                "Who had left it there, and why? {The_} was determined to find out.",
                "Piece by piece, the puzzle began to make sense."],
    "calm bedtime": ["The evening was soft and quiet, and the stars came out one by one.",
                     "{The_} moved slowly and gently, so as not to wake anyone.",
                     "A warm breeze hummed a sleepy little song.",
                     "Everything felt peaceful and safe."],
    "courage": ["{The_} felt scared, but took a deep breath anyway.",
                "It would have been easy to turn back, but {the} did not.",
                "Being brave did not mean having no fear; it meant going on anyway.",
                "With a steady heart, {the} stepped forward."],
    "magical": ["Sparkles danced in the air, and the whole place began to glow.",
                "A soft voice whispered words that no one had heard for a hundred years.",
                "Colours shimmered, and small things began to float.",
                "{The_} felt the magic tingling all the way to the tips of their toes."],
    "kindness": ["{The_} noticed someone who looked sad and went over to help.",
                 "A small kind act made a big difference that day.",
                 "{The_} shared what they had, even though it was not much.",
                 "The kindness spread, and soon everyone was helping someone else."],
}
GENERIC = ["The sun moved slowly across the sky as the day went on.",
           "Along the way, {the} met a little bird who sang a cheerful tune.",
           "{The_} remembered something a wise friend had once said: go slowly and look closely.",
           "A gentle wind carried the smell of flowers and fresh bread.",
           "For a while, nothing happened at all, and then everything happened at once.",
           "{The_} took a short rest, then stood up with new energy.",
           "Nearby, a family of rabbits watched with wide, curious eyes.",
           "It was not easy, but {the} did not give up.",
           "Little by little, things started to change.",
           "The more {the} explored, the more wonderful the place seemed.",
           "There was a lot to see, and {the} wanted to remember all of it.",
           "{The_} hummed a little tune to stay cheerful.",
           "The clouds drifted by, shaped like boats and castles.",
           "Somewhere far away, a bell rang three times.",
           "{The_} counted to ten, just to feel calm and ready.",
           "A squirrel dropped an acorn and chattered a quick hello.",
           "The light changed from gold to pink as the hours passed.",
           "{The_} wondered what a grown-up would do, and then decided to try their own way.",
           "Soft footsteps echoed nearby, but it was only a friendly cat.",
           "Every small step seemed to open a new door.",
           "{The_} wrote a little note so as not to forget anything.",
           "There was a quiet moment when the whole world seemed to listen.",
           "{The_} found a smooth stone and put it in a pocket for luck.",
           "Some things were surprising, and some were exactly as expected.",
           "A kind old neighbour waved and offered a cup of warm milk.",
           "{The_} laughed at how much had changed in just one day.",
           "The air smelled of rain, and a few drops began to fall.",
           "Two butterflies fluttered past, as if showing the way.",
           "{The_} took a long look around and felt very lucky to be there.",
           "When night came close, lanterns began to glow one by one."]
OBJECT = ["{The_} held {object} carefully and looked at it from every side.",
          "{Object_} seemed to be waiting for something.",
          "Everyone who saw {object} wanted to know more about it."]
ENDINGS = {
    "friendship": "From that day on, {the} never forgot that good friends make every day brighter.",
    "adventure": "{The_} came home tired and happy, already dreaming of the next adventure.",
    "funny": "Everyone agreed it was the funniest day they had ever had, and {the} laughed all the way home.",
    "mystery": "The mystery was solved at last, and {the} smiled, proud of every clue.",
    "calm bedtime": "At last {the} curled up, closed their eyes and drifted into a sweet, peaceful sleep.",
    "courage": "{The_} had been brave, and that brave feeling stayed with them for a long, long time.",
    "magical": "The magic faded softly, but {the} knew it would always be there, just out of sight.",
    "kindness": "That night, {the} went to sleep happy, because kindness had made the day wonderful.",
}


def _past(twist: str) -> str:
    verb, _, rest = twist.strip().partition(" ")
    past = _PAST.get(verb.lower())
    if past is None:
        past = re.sub(r"(?:es|s)$", "ed", verb) if verb.endswith("s") else verb
    return f"{past} {rest}".strip()


def _object(twist: str) -> str | None:
    m = re.search(r"\b(?:a|an|the)\s+(.+)$", twist)
    return f"the {m.group(1)}" if m else None


def _the(character: str) -> str:
    return re.sub(r"^(a|an|the|my|some)\s+", "the ", character.strip(), flags=re.IGNORECASE)


def count_words(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", text))


def write_story(choices: StoryChoices, rng: random.Random) -> str:
    """A story for `choices` with a word count inside the length's range (see the module)."""
    low, high = LENGTHS[choices.length]
    target = rng.randint(low + 10, high - 15)
    the = _the(choices.character)
    obj = _object(choices.twist)
    slots = {"a": choices.character, "setting": choices.setting, "the": the, "The_": the[:1].upper() + the[1:],
             "past": _past(choices.twist), "object": obj or "it", "Object_": (obj or "it").capitalize()}

    def fill(s: str) -> str:
        return s.format(**slots)

    theme = choices.theme if choices.theme in MIDDLE else rng.choice(list(MIDDLE))
    head = [fill(rng.choice(OPENINGS)), *map(fill, rng.sample(PLACE, 2)), fill(rng.choice(TWIST)),
            fill(rng.choice(AFTER))]
    if obj:
        head.append(fill(rng.choice(OBJECT)))
    ending = fill(ENDINGS[theme])
    pool = [*MIDDLE[theme], *GENERIC]
    rng.shuffle(pool)
    middle = []
    while pool and count_words(" ".join(head + middle + [ending])) < target:
        middle.append(fill(pool.pop()))
    paragraphs = [" ".join(head), " ".join(middle[:len(middle) // 2]), " ".join(middle[len(middle) // 2:]), ending]
    story = "\n\n".join(p for p in paragraphs if p)
    return story


def random_choices(rng: random.Random, exclude: set | None = None) -> StoryChoices:
    while True:
        c = StoryChoices(rng.choice(CHARACTERS + EXTRA_CHARACTERS), rng.choice(SETTINGS + EXTRA_SETTINGS),
                         rng.choice(TWISTS + EXTRA_TWISTS), rng.choice(THEMES), rng.choice(list(LENGTHS)))
        if not exclude or (c.character, c.setting, c.twist) not in exclude:
            return c


def held_out_choices(n: int = 50, seed: int = 1234) -> list[StoryChoices]:
    """Fixed choice sets for the compliance evaluation; training never uses their (character, setting, twist)."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        c = StoryChoices(rng.choice(CHARACTERS), rng.choice(SETTINGS), rng.choice(TWISTS), rng.choice(THEMES),
                         rng.choice(list(LENGTHS)))
        if (c.character, c.setting, c.twist) not in seen:
            seen.add((c.character, c.setting, c.twist))
            out.append(c)
    return out


def story_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """`n` conversations: the instruction-tuned page prompt for random choices (held-out sets excluded), answered
    by a story that keeps to them; one in five also asks to continue and gets a continuation."""
    rng = random.Random(seed)
    held = {(c.character, c.setting, c.twist) for c in held_out_choices()}
    out = []
    for _ in range(n):
        choices = random_choices(rng, held)
        story = write_story(choices, rng)
        messages = story_prompt(choices, instruction_tuned=True).messages + [{"role": "assistant", "content": story}]
        if rng.random() < 0.2:
            more = write_story(StoryChoices(choices.character, choices.setting, choices.twist, choices.theme, "short"),
                               rng).split("\n\n", 1)[-1]
            messages += [{"role": "user", "content": "Continue the story."},
                         {"role": "assistant", "content": "The next day, " + more[0].lower() + more[1:]}]
        out.append(messages)
    return out
