"""Writes pipeline/data/verifiable_tasks.jsonl: the demo of verifiable tasks, written for this project.

Every row has a gold response (a full sentence, what SFT on gold references trains on), a `check` its task's
checker applies to a model's answer (pipeline.core.checkers), a `category` and a `split` (about 35% held out,
stratified by category, fixed by a hash of the instruction). Run it again after editing the tables; the output is
deterministic.
"""

import hashlib
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "pipeline" / "data" / "verifiable_tasks.jsonl"
NUMBER_NAMES = {2: "two", 3: "three", 4: "four", 5: "five"}

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi", "Delhi"), ("Russia", "Moscow"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia", "Brasília"),
    ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"), ("South Korea", "Seoul"), ("Turkey", "Ankara"), ("Greece", "Athens"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"), ("Switzerland", "Bern", "Berne"), ("the Czech Republic", "Prague"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("the Philippines", "Manila"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Colombia", "Bogota", "Bogotá"), ("Cuba", "Havana"),
    ("Morocco", "Rabat"), ("Ethiopia", "Addis Ababa"), ("Ghana", "Accra"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"), ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Ukraine", "Kyiv", "Kiev"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Iceland", "Reykjavik", "Reykjavík"), ("New Zealand", "Wellington"), ("Malaysia", "Kuala Lumpur"),
    ("Venezuela", "Caracas"), ("Uruguay", "Montevideo"), ("Senegal", "Dakar"), ("Algeria", "Algiers"),
    ("Tunisia", "Tunis"), ("Jordan", "Amman"), ("Lebanon", "Beirut"), ("Syria", "Damascus"),
    ("Nepal", "Kathmandu"), ("Mongolia", "Ulaanbaatar", "Ulan Bator"), ("Afghanistan", "Kabul"),
]  # fmt: skip
OPPOSITES = [
    ("hot", "cold"), ("big", "small", "little"), ("tall", "short"), ("fast", "slow"), ("happy", "sad", "unhappy"),
    ("up", "down"), ("open", "closed", "shut", "close"), ("early", "late"), ("full", "empty"), ("wet", "dry"),
    ("thick", "thin"), ("rich", "poor"), ("strong", "weak"), ("high", "low"), ("clean", "dirty"),
    ("cheap", "expensive"), ("win", "lose"), ("push", "pull"), ("buy", "sell"), ("give", "take", "receive"),
    ("begin", "end", "finish"), ("first", "last"), ("inside", "outside"), ("day", "night"), ("black", "white"),
    ("true", "false"), ("good", "bad", "evil"), ("young", "old"), ("near", "far"), ("front", "back"),
    ("above", "below", "under"), ("before", "after"), ("always", "never"), ("asleep", "awake"), ("alive", "dead"),
    ("heavy", "light"), ("wide", "narrow"), ("deep", "shallow"), ("safe", "dangerous", "unsafe"),
    ("friend", "enemy"), ("north", "south"), ("east", "west"), ("summer", "winter"), ("question", "answer"),
    ("arrive", "leave", "depart"), ("remember", "forget"), ("love", "hate"), ("maximum", "minimum"),
    ("visible", "invisible"), ("correct", "incorrect", "wrong"), ("laugh", "cry"), ("sunrise", "sunset"),
    ("entrance", "exit"), ("increase", "decrease"), ("success", "failure"), ("import", "export"),
    ("guilty", "innocent"), ("ancient", "modern"), ("sweet", "sour", "bitter"), ("loud", "quiet", "soft", "silent"),
]  # fmt: skip
WORDS = (
    "river garden window planet pencil yellow mountain bottle candle rabbit orange silver teacher castle bridge "
    "forest circle dragon flower guitar hammer island jacket kitten ladder market number ocean pepper rocket "
    "school summer tiger violin water winter zebra apple basket cloud dinner engine family honey lemon mirror "
    "needle paper pillow queen ribbon saddle table tunnel turtle wagon button carpet doctor finger garlic "
    "holiday insect journey kettle library meadow noodle palace parrot puzzle rainbow sandwich spider station "
    "thunder umbrella village whistle"
).split()
LISTS = {
    "fruits": ["apples", "pears", "plums", "bananas", "cherries"],
    "colors": ["red", "blue", "green", "yellow", "purple"],
    "animals": ["dogs", "cats", "horses", "lions", "rabbits"],
    "vegetables": ["carrots", "peas", "onions", "potatoes", "beans"],
    "musical instruments": ["the piano", "the violin", "the guitar", "the flute", "the drum"],
    "sports": ["football", "tennis", "swimming", "cycling", "rowing"],
    "planets": ["Mercury", "Venus", "Mars", "Jupiter", "Saturn"],
    "birds": ["robins", "sparrows", "eagles", "owls", "swans"],
    "tools": ["a hammer", "a saw", "a drill", "a wrench", "a screwdriver"],
    "countries in Europe": ["France", "Spain", "Italy", "Poland", "Norway"],
}
VERBS = ["walk", "play", "cook", "clean", "watch", "open", "paint", "visit", "help", "call"]
OBJECTS = {
    "walk": "to school", "play": "in the park", "cook": "dinner", "clean": "the kitchen", "watch": "the birds",
    "open": "the door", "paint": "the fence", "visit": "my aunt", "help": "my friend", "call": "the doctor",
}  # fmt: skip
SUBJECTS = ["I", "We", "They", "You"]
SINGLE_WORD = [
    ("what color is grass", "green"), ("what color is the clear daytime sky", "blue"), ("what color is snow", "white"),
    ("what color is coal", "black"), ("what color is a ripe banana", "yellow"), ("what color is blood", "red"),
    ("what animal says moo", "cow"), ("what animal says woof", "dog"), ("what animal says meow", "cat"),
    ("what animal says quack", "duck"), ("what animal has a trunk", "elephant"),
    ("what is frozen water called", "ice"), ("what do bees make", "honey"), ("what star does the Earth orbit", "sun"),
    ("what season comes after winter", "spring"),
    ("what season comes after summer", "autumn"), ("what is the opposite of yes", "no"),
    ("what day comes after Monday", "tuesday"), ("what day comes after Friday", "saturday"),
    ("what month comes after January", "february"), ("what month comes after June", "july"),
    ("what do you call a baby dog", "puppy"), ("what do you call a baby cat", "kitten"),
    ("what do you call a baby cow", "calf"), ("what gas do people need to breathe", "oxygen"),
    ("what is the largest ocean on Earth", "pacific"), ("what organ pumps blood through the body", "heart"),
    ("what do cows drink", "water"), ("what shape has three sides", "triangle"),
    ("what shape has four equal sides", "square"),
]  # fmt: skip
ACCEPT_SINGLE = {"autumn": ["fall"], "puppy": ["pup"]}


def arithmetic(rng: random.Random) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < 160:
        op = rng.choice(["plus", "minus", "times"])
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "times" else (rng.randint(10, 99), rng.randint(2, 60))
        if op == "minus" and b > a:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
        rows.append(row("arithmetic", f"What is {a} {op} {b}?", f"{a} {op} {b} equals {value}.", number(value)))
    return rows


def number(value: int) -> dict:
    return {"type": "number", "value": value}


def row(category: str, instruction: str, response: str, check: dict, group: str | None = None) -> dict:
    """`group`: rows that are near copies of each other (one verb in four persons, one category in four lengths)
    share it and so their split: a held-out row never has a near twin in training."""
    return {"instruction": instruction, "response": response, "category": category, "check": check,
            "group": group or instruction}  # fmt: skip


def build() -> list[dict]:
    rng = random.Random(20261206)
    rows = arithmetic(rng)
    for word in WORDS:
        rows.append(
            row("counting", f"How many letters are in the word '{word}'?",
                f"The word '{word}' has {len(word)} letters.", number(len(word)))
        )  # fmt: skip
        rows.append(
            row("uppercase", f"Write the word '{word}' in capital letters.", word.upper(),
                {"type": "exact_case", "value": word.upper()})
        )  # fmt: skip
    for country, capital, *accept in CAPITALS:
        rows.append(
            row("capitals", f"What is the capital of {country}?", f"The capital of {country} is {capital}.",
                {"type": "phrase", "value": capital, "accept": accept})
        )  # fmt: skip
    for word, opposite, *accept in OPPOSITES:
        rows.append(
            row("opposites", f"Give the opposite of the word '{word}'.", f"The opposite of '{word}' is '{opposite}'.",
                {"type": "phrase", "value": opposite, "accept": accept})
        )  # fmt: skip
    for _ in range(40):
        a, b = rng.sample(range(1, 100), 2)
        answer = "yes" if a > b else "no"
        rows.append(row("yes_no", f"Answer yes or no: is {a} greater than {b}?",
                        f"{answer.capitalize()}, {a} is {'greater' if a > b else 'less'} than {b}.",
                        {"type": "yes_no", "value": answer}))  # fmt: skip
    for n in sorted(rng.sample(range(2, 100), 40)):
        answer = "yes" if n % 2 == 0 else "no"
        rows.append(row("yes_no", f"Answer yes or no: is {n} an even number?",
                        f"{answer.capitalize()}, {n} is {'even' if n % 2 == 0 else 'odd'}.",
                        {"type": "yes_no", "value": answer}))  # fmt: skip
    for category, items in LISTS.items():
        for n in (2, 3, 4, 5):
            chosen = items[:n]
            listed = ", ".join(chosen[:-1]) + " and " + chosen[-1]
            rows.append(
                row(
                    "lists",
                    f"List {NUMBER_NAMES[n]} {category}.",
                    f"{NUMBER_NAMES[n].capitalize()} {category}: {listed}.",
                    {"type": "list_items", "n": n},
                    group=f"list {category}",  # one category in four lengths: one split
                )
            )
    for subject in SUBJECTS:
        for verb in VERBS:
            past = verb + ("d" if verb.endswith("e") else "ed")
            sentence = f"{subject} {past} {OBJECTS[verb]}."
            rows.append(
                row(
                    "rewrite",
                    f"Rewrite the sentence in the past tense: {subject} {verb} {OBJECTS[verb]}.",
                    sentence,
                    {"type": "sentence", "value": sentence},
                    group=f"rewrite {verb}",  # one verb in four persons: one split
                )
            )
    for question, word in SINGLE_WORD:
        rows.append(
            row(
                "single_word",
                f"Answer with a single word: {question}?",
                word.capitalize() + ".",
                {"type": "single_word", "value": word, "accept": ACCEPT_SINGLE.get(word, [])},
                group=question.rsplit(" ", 1)[0],  # "what do you call a baby ...": one group, one split
            )
        )
    for r in rows:
        digest = int(hashlib.sha256(r.pop("group").encode()).hexdigest(), 16)
        r["split"] = "heldout" if digest % 100 < 35 else "train"
    return rows


if __name__ == "__main__":
    rows = build()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{OUT}: {len(rows)} rows, {sum(r['split'] == 'heldout' for r in rows)} held out")
