#!/usr/bin/env python3
"""Build the demo study's two local lm-eval datasets, deterministically.

    python tasks/demo/make_data.py            # writes tasks/demo/data/*.jsonl
    python tasks/demo/make_data.py --out DIR  # writes DIR/*.jsonl instead
    python tasks/demo/make_data.py --check    # exit 1 if the committed files differ

Everything (facts, templates, seeds) is hard-coded here; nothing is downloaded.
Output is byte-for-byte reproducible (seeded ``random.Random``, fixed key order,
ASCII-only JSON, ``\\n`` line endings), and ``tests/test_tasks.py`` checks that the
committed files match what this script produces.

capitals.jsonl      -> task ``demo_capitals``    (multiple_choice, 4 options)
passage_qa.jsonl    -> task ``demo_passage_qa``  (generate_until, CoQA-style span QA)
ner.jsonl           -> task ``demo_ner``         (generate_until, JSON list of [entity, type];
                                                  the task YAML is tasks/ner/demo_ner.yaml)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data"

CAPITALS_FILE = "capitals.jsonl"
PASSAGE_QA_FILE = "passage_qa.jsonl"
NER_FILE = "ner.jsonl"

CAPITALS_SEED = 20240601
PASSAGE_QA_SEED = 20240602
N_PASSAGE_QA = 220  # 20 items per question type (11 types)
NER_SEED = 20240603
N_NER = 200  # 50 of them (a quarter) with no entity; the fewest the issue allows (demo time)
N_CHOICES = 4
N_HISTORY = 2  # CoQA-style: answered turns shown before the target question

# ---------------------------------------------------------------------------
# Multiple choice: capitals.
# Only countries whose capital is uncontroversial and not merely "<Country> City"
# (no Bolivia, South Africa, Israel, Cote d'Ivoire, Myanmar, Sri Lanka, Tanzania,
# Kazakhstan, Indonesia, Sudan, Yemen, Burundi, Mexico City, Kuwait City, ...).
# ASCII spellings on purpose.
# ---------------------------------------------------------------------------
COUNTRY_CAPITALS: list[tuple[str, str]] = [
    ("Afghanistan", "Kabul"),
    ("Albania", "Tirana"),
    ("Algeria", "Algiers"),
    ("Angola", "Luanda"),
    ("Argentina", "Buenos Aires"),
    ("Armenia", "Yerevan"),
    ("Australia", "Canberra"),
    ("Austria", "Vienna"),
    ("Azerbaijan", "Baku"),
    ("the Bahamas", "Nassau"),
    ("Bahrain", "Manama"),
    ("Bangladesh", "Dhaka"),
    ("Barbados", "Bridgetown"),
    ("Belarus", "Minsk"),
    ("Belgium", "Brussels"),
    ("Belize", "Belmopan"),
    ("Bhutan", "Thimphu"),
    ("Bosnia and Herzegovina", "Sarajevo"),
    ("Botswana", "Gaborone"),
    ("Brazil", "Brasilia"),
    ("Bulgaria", "Sofia"),
    ("Burkina Faso", "Ouagadougou"),
    ("Cambodia", "Phnom Penh"),
    ("Cameroon", "Yaounde"),
    ("Canada", "Ottawa"),
    ("Chad", "N'Djamena"),
    ("Chile", "Santiago"),
    ("China", "Beijing"),
    ("Colombia", "Bogota"),
    ("Costa Rica", "San Jose"),
    ("Croatia", "Zagreb"),
    ("Cuba", "Havana"),
    ("Cyprus", "Nicosia"),
    ("the Czech Republic", "Prague"),
    ("Denmark", "Copenhagen"),
    ("the Dominican Republic", "Santo Domingo"),
    ("Ecuador", "Quito"),
    ("Egypt", "Cairo"),
    ("El Salvador", "San Salvador"),
    ("Eritrea", "Asmara"),
    ("Estonia", "Tallinn"),
    ("Ethiopia", "Addis Ababa"),
    ("Fiji", "Suva"),
    ("Finland", "Helsinki"),
    ("France", "Paris"),
    ("Gabon", "Libreville"),
    ("Georgia", "Tbilisi"),
    ("Germany", "Berlin"),
    ("Ghana", "Accra"),
    ("Greece", "Athens"),
    ("Guinea", "Conakry"),
    ("Guyana", "Georgetown"),
    ("Haiti", "Port-au-Prince"),
    ("Honduras", "Tegucigalpa"),
    ("Hungary", "Budapest"),
    ("Iceland", "Reykjavik"),
    ("India", "New Delhi"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Ireland", "Dublin"),
    ("Italy", "Rome"),
    ("Jamaica", "Kingston"),
    ("Japan", "Tokyo"),
    ("Jordan", "Amman"),
    ("Kenya", "Nairobi"),
    ("Kyrgyzstan", "Bishkek"),
    ("Laos", "Vientiane"),
    ("Latvia", "Riga"),
    ("Lebanon", "Beirut"),
    ("Liberia", "Monrovia"),
    ("Libya", "Tripoli"),
    ("Lithuania", "Vilnius"),
    ("Madagascar", "Antananarivo"),
    ("Malawi", "Lilongwe"),
    ("Malaysia", "Kuala Lumpur"),
    ("Mali", "Bamako"),
    ("Malta", "Valletta"),
    ("Mauritania", "Nouakchott"),
    ("Moldova", "Chisinau"),
    ("Mongolia", "Ulaanbaatar"),
    ("Montenegro", "Podgorica"),
    ("Morocco", "Rabat"),
    ("Mozambique", "Maputo"),
    ("Namibia", "Windhoek"),
    ("Nepal", "Kathmandu"),
    ("the Netherlands", "Amsterdam"),
    ("New Zealand", "Wellington"),
    ("Nicaragua", "Managua"),
    ("Niger", "Niamey"),
    ("Nigeria", "Abuja"),
    ("North Korea", "Pyongyang"),
    ("North Macedonia", "Skopje"),
    ("Norway", "Oslo"),
    ("Oman", "Muscat"),
    ("Pakistan", "Islamabad"),
    ("Papua New Guinea", "Port Moresby"),
    ("Paraguay", "Asuncion"),
    ("Peru", "Lima"),
    ("the Philippines", "Manila"),
    ("Poland", "Warsaw"),
    ("Portugal", "Lisbon"),
    ("Qatar", "Doha"),
    ("Romania", "Bucharest"),
    ("Russia", "Moscow"),
    ("Rwanda", "Kigali"),
    ("Saudi Arabia", "Riyadh"),
    ("Senegal", "Dakar"),
    ("Serbia", "Belgrade"),
    ("Sierra Leone", "Freetown"),
    ("Slovakia", "Bratislava"),
    ("Slovenia", "Ljubljana"),
    ("Somalia", "Mogadishu"),
    ("South Korea", "Seoul"),
    ("Spain", "Madrid"),
    ("Suriname", "Paramaribo"),
    ("Sweden", "Stockholm"),
    ("Switzerland", "Bern"),
    ("Syria", "Damascus"),
    ("Tajikistan", "Dushanbe"),
    ("Thailand", "Bangkok"),
    ("Togo", "Lome"),
    ("Trinidad and Tobago", "Port of Spain"),
    ("Tunisia", "Tunis"),
    ("Turkey", "Ankara"),
    ("Turkmenistan", "Ashgabat"),
    ("Uganda", "Kampala"),
    ("Ukraine", "Kyiv"),
    ("the United Arab Emirates", "Abu Dhabi"),
    ("the United Kingdom", "London"),
    ("the United States", "Washington, D.C."),
    ("Uruguay", "Montevideo"),
    ("Uzbekistan", "Tashkent"),
    ("Venezuela", "Caracas"),
    ("Vietnam", "Hanoi"),
    ("Zambia", "Lusaka"),
    ("Zimbabwe", "Harare"),
]


def _slug(text: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def _display_country(country: str) -> str:
    """'the Netherlands' -> 'The Netherlands' when it is an answer option."""
    return country[0].upper() + country[1:]


def _mc_item(
    rng: random.Random, item_id: str, kind: str, question: str, answer: str, pool: list[str]
) -> dict:
    distractors = rng.sample([p for p in pool if p != answer], N_CHOICES - 1)
    choices = distractors + [answer]
    rng.shuffle(choices)
    return {
        "id": item_id,
        "kind": kind,
        "question": question,
        "choices": choices,
        "label": choices.index(answer),
        "answer": answer,
    }


def make_capitals(seed: int = CAPITALS_SEED) -> list[dict]:
    """Two items per country: capital-of-country and country-of-capital."""
    rng = random.Random(seed)
    capitals = [cap for _, cap in COUNTRY_CAPITALS]
    countries = [_display_country(c) for c, _ in COUNTRY_CAPITALS]
    items: list[dict] = []
    for country, capital in COUNTRY_CAPITALS:
        slug = _slug(country.removeprefix("the "))
        items.append(
            _mc_item(
                rng,
                f"capitals-c2k-{slug}",
                "country_to_capital",
                f"What is the capital of {country}?",
                capital,
                capitals,
            )
        )
        items.append(
            _mc_item(
                rng,
                f"capitals-k2c-{slug}",
                "capital_to_country",
                f"{capital} is the capital of which country?",
                _display_country(country),
                countries,
            )
        )
    return items


# ---------------------------------------------------------------------------
# Generative: CoQA-style passage QA over synthetic people.
# Each item: a fresh short passage, N_HISTORY answered Q/A turns, one target
# question whose answer is a verbatim span of the passage. Facts are random, so
# the model has to read the passage (world knowledge does not help).
# Value pools are disjoint from each other so every answer is unambiguous.
# ---------------------------------------------------------------------------
FEMALE_NAMES = [
    "Anna",
    "Maria",
    "Elena",
    "Sofia",
    "Clara",
    "Nora",
    "Lena",
    "Julia",
    "Emma",
    "Rosa",
    "Ingrid",
    "Priya",
    "Amara",
    "Yuki",
    "Leila",
    "Marta",
]
MALE_NAMES = [
    "David",
    "Tomas",
    "Lukas",
    "Omar",
    "Pavel",
    "Hugo",
    "Felix",
    "Marco",
    "Jonas",
    "Kenji",
    "Ravi",
    "Samuel",
    "Oscar",
    "Victor",
    "Milan",
    "Andre",
]
SURNAMES = [
    "Kowalski",
    "Moreno",
    "Lindqvist",
    "Okafor",
    "Brennan",
    "Haddad",
    "Novak",
    "Castillo",
    "Fischer",
    "Tanaka",
    "Romano",
    "Petrov",
    "Dubois",
    "Jensen",
    "Mensah",
    "Silva",
]
JOBS = [
    "baker",
    "nurse",
    "pilot",
    "teacher",
    "carpenter",
    "librarian",
    "dentist",
    "farmer",
    "plumber",
    "architect",
    "chef",
    "mechanic",
    "photographer",
    "journalist",
    "electrician",
    "pharmacist",
]
CITIES = [
    "Lisbon",
    "Oslo",
    "Lyon",
    "Krakow",
    "Porto",
    "Dublin",
    "Bergen",
    "Seville",
    "Turin",
    "Leeds",
    "Ghent",
    "Graz",
    "Utrecht",
    "Malmo",
    "Riga",
    "Tampere",
]
PETS = ["dog", "cat", "parrot", "rabbit", "turtle", "hamster", "goat", "pony"]
PET_NAMES = [
    "Biscuit",
    "Pepper",
    "Rocky",
    "Luna",
    "Max",
    "Daisy",
    "Ziggy",
    "Mango",
    "Olive",
    "Bruno",
    "Coco",
    "Pickles",
    "Shadow",
    "Ginger",
    "Tofu",
    "Waffles",
]
COLORS = ["red", "blue", "green", "yellow", "orange", "purple", "white", "black", "silver", "brown"]
VEHICLES = ["bicycle", "car", "truck", "scooter", "van", "motorcycle"]
FOODS = [
    "lentil soup",
    "apple pie",
    "fried rice",
    "fish tacos",
    "mushroom risotto",
    "pancakes",
    "chicken curry",
    "tomato salad",
    "beef stew",
    "pumpkin bread",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PLACES = ["market", "library", "beach", "park", "gym", "museum", "lake", "harbor"]
INSTRUMENTS = ["violin", "piano", "guitar", "drums", "flute", "trumpet", "cello", "harmonica"]
# question types whose wording contains the other's answer
PAIRED = {"pet_name": "pet_kind", "pet_kind": "pet_name", "day": "place", "place": "day"}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

# question type -> (question template, answer slot). Answers are slot values.
QUESTION_TYPES: dict[str, tuple[str, str]] = {
    "job": ("What is {first}'s job?", "job"),
    "city": ("In which city does {first} live?", "city"),
    "pet_name": ("What is the name of {first}'s {pet}?", "pet_name"),
    "pet_kind": ("What kind of animal is {pet_name}?", "pet"),
    "color": ("What color is {first}'s {vehicle}?", "color"),
    "day": ("On which day does {first} go to the {place}?", "day"),
    "place": ("Where does {first} go every {day}?", "place_span"),
    "sibling": ("What is the name of {first}'s {sibling_rel}?", "sibling"),
    "food": ("What is {first}'s favorite food?", "food"),
    "instrument": ("What instrument does {first} play?", "instrument"),
    "children": ("How many children does {first} have?", "children"),
}


def _person(rng: random.Random) -> dict:
    female = rng.random() < 0.5
    first = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
    sibling_female = rng.random() < 0.5
    sibling = rng.choice(
        [n for n in (FEMALE_NAMES if sibling_female else MALE_NAMES) if n != first]
    )
    place = rng.choice(PLACES)
    n_children = rng.choice(sorted(NUMBER_WORDS))
    return {
        "first": first,
        "last": rng.choice(SURNAMES),
        "he": "She" if female else "He",
        "his": "Her" if female else "His",
        "his_lc": "her" if female else "his",
        "job": rng.choice(JOBS),
        "city": rng.choice(CITIES),
        "pet": rng.choice(PETS),
        "pet_name": rng.choice(PET_NAMES),
        "color": rng.choice(COLORS),
        "vehicle": rng.choice(VEHICLES),
        "food": rng.choice(FOODS),
        "day": rng.choice(DAYS),
        "place": place,
        "place_span": f"the {place}",
        "sibling_rel": "sister" if sibling_female else "brother",
        "sibling": sibling,
        "instrument": rng.choice(INSTRUMENTS),
        "children": NUMBER_WORDS[n_children],
        "children_digit": str(n_children),
    }


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _passage(rng: random.Random, p: dict) -> str:
    intro = f"{p['first']} {p['last']} is {_a(p['job'])} who lives in {p['city']}."
    rest = [
        f"{p['he']} has {_a(p['pet'])} named {p['pet_name']}.",
        f"{p['he']} owns {_a(p['color'])} {p['vehicle']}.",
        f"Every {p['day']}, {p['he'].lower()} goes to the {p['place']} with "
        f"{p['his_lc']} {p['sibling_rel']}, {p['sibling']}.",
        f"{p['his']} favorite food is {p['food']}.",
        f"In the evenings, {p['he'].lower()} plays the {p['instrument']}.",
        f"{p['he']} has {p['children']} children.",
    ]
    rng.shuffle(rest)
    return " ".join([intro] + rest)


def _qa(qtype: str, p: dict) -> tuple[str, str, list[str]]:
    template, slot = QUESTION_TYPES[qtype]
    question = template.format(**p)
    answer = p[slot]
    answers = [answer]
    if qtype == "children":
        answers.append(p["children_digit"])
    return question, answer, answers


def make_passage_qa(seed: int = PASSAGE_QA_SEED, n: int = N_PASSAGE_QA) -> list[dict]:
    rng = random.Random(seed)
    qtypes = list(QUESTION_TYPES)
    items: list[dict] = []
    for i in range(n):
        p = _person(rng)
        passage = _passage(rng, p)
        target = qtypes[i % len(qtypes)]  # balanced over question types
        # history never includes the target's partner question (its wording
        # would give the target answer away)
        banned = {target, PAIRED.get(target)}
        history_types = rng.sample([t for t in qtypes if t not in banned], N_HISTORY)
        history = []
        for t in history_types:
            q, a, _ = _qa(t, p)
            history.append({"question": q, "answer": a})
        question, answer, answers = _qa(target, p)
        items.append(
            {
                "id": f"passage-qa-{i:04d}",
                "qtype": target,
                "passage": passage,
                "history": history,
                "question": question,
                "answer": answer,
                "answers": answers,
            }
        )
    return items


# ---------------------------------------------------------------------------
# Structured extraction: short sentences about synthetic people, companies and
# cities; the gold answer is the list of [entity, type] pairs (types "person",
# "company", "city": SmolLM2-135M writes these words far more reliably than
# CoNLL's codes PER/ORG/LOC) in order of appearance. A quarter of the sentences hold no entity (and no
# capitalised word but the first), so over-extraction shows on them.
# Names come from the pools above; the organisations are invented. None of them
# appears in the task's instruction (tasks/ner/demo_ner.yaml).
# ---------------------------------------------------------------------------
ORGS = [
    "Nordbank",
    "Helix Motors",
    "Bluewave Foods",
    "Orion Labs",
    "Greenfield Bank",
    "Atlas Airlines",
    "Pinecrest Hotels",
    "Silverline Rail",
    "Kestrel Media",
    "Summit Insurance",
    "Redwood Press",
    "Polar Telecom",
]
NER_CITIES = CITIES + ["Madrid", "Vienna", "Prague", "Athens", "Cairo", "Tokyo", "Lima", "Quito"]
# template -> its slots in order; {per}/{per2} people, {org} organisations, {loc}/{loc2} places
NER_TEMPLATES = [
    "{per} works for {org} in {loc}.",
    "{per} moved to {loc} last year.",
    "{org} opened a new office in {loc}.",
    "{per} met {per2} in {loc}.",
    "{per} joined {org} in the spring.",
    "{org} hired {per} as a manager.",
    "{per} flew from {loc} to {loc2}.",
    "{per} called {per2} yesterday.",
    "{org} is based in {loc}.",
    "{per} left {org} after ten years.",
    "A spokesman for {org} said the deal was done.",
    "{per} was born in {loc}.",
]
NER_EMPTY_SUBJECTS = [
    "The old man",
    "My neighbour",
    "The children",
    "A small dog",
    "The teacher",
    "Our team",
    "The farmer",
    "His sister",
    "The new driver",
    "Her father",
]
NER_EMPTY_PREDICATES = [
    "was late again",
    "bought fresh bread",
    "walked to the park",
    "slept until noon",
    "fixed the broken door",
    "painted the fence",
    "lost the keys",
    "cooked a large dinner",
    "won the game",
    "read a long book",
]
NER_EMPTY_TIMES = ["yesterday", "this morning", "last week", "on the weekend", "after lunch", ""]


def _ner_person(rng: random.Random) -> str:
    return f"{rng.choice(FEMALE_NAMES + MALE_NAMES)} {rng.choice(SURNAMES)}"


def _ner_sentence(rng: random.Random, template: str) -> tuple[str, list[list[str]]]:
    """A sentence from a template and its gold [entity, type] pairs, in order of appearance."""
    per = _ner_person(rng)
    per2 = _ner_person(rng)
    while per2 == per:
        per2 = _ner_person(rng)
    loc, loc2 = rng.sample(NER_CITIES, 2)
    values = {"per": (per, "person"), "per2": (per2, "person"), "org": (rng.choice(ORGS), "company"),
              "loc": (loc, "city"), "loc2": (loc2, "city")}  # fmt: skip
    slots = [s.split("}")[0] for s in template.split("{")[1:]]
    sentence = template.format(**{k: v[0] for k, v in values.items()})
    return sentence, [list(values[s]) for s in slots]


def make_ner(seed: int = NER_SEED, n: int = N_NER) -> list[dict]:
    """n sentences, every fourth with no entity, the rest from NER_TEMPLATES in turn."""
    rng = random.Random(seed)
    items: list[dict] = []
    for i in range(n):
        if i % 4 == 3:
            time = rng.choice(NER_EMPTY_TIMES)
            words = [rng.choice(NER_EMPTY_SUBJECTS), rng.choice(NER_EMPTY_PREDICATES), time]
            sentence, entities = " ".join(w for w in words if w) + ".", []
            kind = "empty"
        else:
            template = NER_TEMPLATES[(i - i // 4) % len(NER_TEMPLATES)]
            sentence, entities = _ner_sentence(rng, template)
            kind = "entities"
        items.append({"id": f"ner-{i:04d}", "kind": kind, "sentence": sentence,
                      "entities": entities})  # fmt: skip
    return items


# ---------------------------------------------------------------------------
def dumps_jsonl(items: list[dict]) -> bytes:
    return "".join(json.dumps(it, ensure_ascii=True) + "\n" for it in items).encode("ascii")


def build_all() -> dict[str, bytes]:
    """File name -> exact file bytes."""
    return {
        CAPITALS_FILE: dumps_jsonl(make_capitals()),
        PASSAGE_QA_FILE: dumps_jsonl(make_passage_qa()),
        NER_FILE: dumps_jsonl(make_ner()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})"
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if files in --out differ from the generator",
    )
    args = ap.parse_args(argv)

    files = build_all()
    if args.check:
        stale = [
            n
            for n, b in files.items()
            if not (args.out / n).is_file() or (args.out / n).read_bytes() != b
        ]
        for n in stale:
            print(f"stale or missing: {args.out / n}", file=sys.stderr)
        return 1 if stale else 0

    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
        n_items = data.count(b"\n")
        print(f"wrote {args.out / name} ({n_items} items)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
