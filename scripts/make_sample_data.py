"""Write sample_data/<task>/<split>.jsonl: small, project-made rows in each dataset's real (hub) schema, and
sample_data/edits/counterfact.json: 100 edit requests in ROME's CounterFact format, written by this project from
well-known facts (cities and their countries, landmarks and their cities, countries and their languages), each
with two paraphrases and up to five neighbours that share its true answer.

The rows are synthetic and made to be learnable: in every task the label follows from one visible cue
in the text (a verb of certainty, a shared word, a topic keyword), so a short LoRA run on a small model
can beat the majority baseline. No evaluation row repeats a training row (the evaluation measures what was
learnt, not what was seen). They test the pipeline, not the paper's claim. Deterministic:
re-running writes the same bytes (a test checks this).

    python scripts/make_sample_data.py [--out sample_data]
"""

import argparse
import json
import os
import random

NAMES = ["Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam",
         "Maya", "Noah", "Olga", "Pedro", "Rosa", "Sami", "Tara", "Victor"]
THINGS = ["bridge", "garden", "library", "train", "bakery", "museum", "river", "castle", "market", "school",
          "harbour", "forest", "tower", "stadium", "theatre", "farm", "airport", "island", "mountain", "village"]
ATTRS = ["old", "large", "quiet", "busy", "famous", "modern", "narrow", "crowded", "beautiful", "expensive"]
ACTIONS = ["visited the {t}", "painted the {t}", "photographed the {t}", "cleaned the {t}", "walked to the {t}",
           "wrote about the {t}", "sold tickets at the {t}", "guarded the {t}"]
FOODS = ["apples", "bread", "cheese", "soup", "rice", "noodles", "cake", "fish", "beans", "pears"]
TOPICS = {  # 20 Newsgroups-like: the newsgroup follows from its keywords
    "sci.space": ["rocket", "orbit", "NASA", "launch", "satellite", "moon", "shuttle", "astronaut"],
    "rec.autos": ["engine", "car", "dealer", "brakes", "sedan", "mileage", "transmission", "tires"],
    "comp.graphics": ["rendering", "pixels", "polygon", "shader", "bitmap", "GIF", "texture", "raytracer"],
    "rec.sport.hockey": ["puck", "goalie", "NHL", "playoffs", "rink", "stick", "Stanley Cup", "penalty"],
    "talk.politics.guns": ["rifle", "firearms", "NRA", "handgun", "ammunition", "permit", "holster", "militia"],
}


def clause(rng):
    return f"{rng.choice(NAMES)} {rng.choice(ACTIONS).format(t=rng.choice(THINGS))}"


def nli_pair(rng, kind):
    """(premise, hypothesis) whose relation is `kind`: the premise's verb of certainty carries it."""
    c, who = clause(rng), rng.choice(NAMES)
    lead = {"entailment": "confirmed that", "contradiction": "denied that", "neutral": "wondered whether"}[kind]
    return f"{who} {lead} {c} yesterday.", f"{c}."


def boolq(rng, i):
    t, a = rng.choice(THINGS), rng.choice(ATTRS)
    label = rng.randint(0, 1)
    verb = "confirm" if label else "deny"
    passage = (f"The {t} stands near the town centre. Local records {verb} that the {t} is {a}. "
               f"Visitors often come in the summer.")
    return {"question": f"is the {t} {a}", "passage": passage, "idx": i, "label": label}


def copa(rng, i):
    t, other = rng.sample(THINGS, 2)
    who = rng.choice(NAMES)
    question = rng.choice(["cause", "effect"])
    premise = f"{who} {'looked at' if question == 'effect' else 'smiled at'} the {t}."
    right = f"{who} thought about the {t}." if question == "effect" else f"{who} liked the {t}."
    wrong = f"Nobody ever saw the {other}."  # the cue: the wrong choice is about nobody and another place
    label = rng.randint(0, 1)
    c1, c2 = (wrong, right) if label else (right, wrong)
    return {"premise": premise, "choice1": c1, "choice2": c2, "question": question, "idx": i, "label": label}


def nli(label_names, premise_col="premise", hypothesis_col="hypothesis"):
    def make(rng, i):
        label = rng.randrange(len(label_names))
        kind = label_names[label].replace("not_entailment", "contradiction")
        p, h = nli_pair(rng, kind)
        return {premise_col: p, hypothesis_col: h, "idx": i, "label": label}
    return make


def qnli(rng, i):
    t, other, a = *rng.sample(THINGS, 2), rng.choice(ATTRS)
    label = rng.randint(0, 1)  # 0 entailment: the sentence answers the question about the same thing
    sentence = f"The {t if label == 0 else other} is {a} and well known."
    return {"question": f"What is the {t} like?", "sentence": sentence, "idx": i, "label": label}


def race(rng, i):
    who, foods = rng.choice(NAMES), rng.sample(FOODS, 4)
    answer = rng.randrange(4)
    article = (f"{who} goes to the market every Saturday. This week {who} bought {foods[answer]} for the family. "
               f"The market was crowded and the weather was warm.")
    return {"example_id": f"sample{i}.txt", "article": article, "question": f"What did {who} buy this week?",
            "options": foods, "answer": "ABCD"[answer]}


def commonsense_qa(rng, i):
    t, a = rng.choice(THINGS), rng.choice(ATTRS)
    places = rng.sample([x for x in THINGS if x != t], 4)
    answer = rng.randrange(5)
    places.insert(answer, t)
    q = f"Where would you find something {a} that people call the {t}?"
    return {"id": f"sample{i}", "question": q, "question_concept": t,
            "choices": {"label": list("ABCDE"), "text": places}, "answerKey": "ABCDE"[answer]}


def swag(rng, i):
    who, t = rng.choice(NAMES), rng.choice(THINGS)
    others = rng.sample([x for x in THINGS if x != t], 3)
    label = rng.randrange(4)
    endings = [f"walks towards the {x}." for x in others]
    endings.insert(label, f"walks towards the {t}.")
    return {"video-id": f"sample{i}", "fold-ind": str(i), "startphrase": f"{who} sees the {t}. {who}",
            "sent1": f"{who} sees the {t}.", "sent2": who, "gold-source": "gold",
            **{f"ending{k}": e for k, e in enumerate(endings)}, "label": label}


def newsgroups(rng, i):
    label = rng.choice(sorted(TOPICS))
    words = rng.sample(TOPICS[label], 3)
    text = (f"From: {rng.choice(NAMES).lower()}@example.org\nSubject: question about the {words[0]}\n\n"
            f"Has anyone here dealt with the {words[1]} before? I read that the {words[2]} matters most.")
    return {"text": text, "label": label}


def qa_fact(rng):
    who, food, t = rng.choice(NAMES), rng.choice(FOODS), rng.choice(THINGS)
    context = f"{who} lives near the {t}. Every morning {who} eats {food} before work."
    return context, f"What does {who} eat every morning?", food


def squad_v2(rng, i):
    context, question, answer = qa_fact(rng)
    return {"id": f"sample{i}", "title": "Sample", "context": context, "question": question,
            "answers": {"text": [answer], "answer_start": [context.index(answer)]}}


def newsqa(rng, i):
    context, question, answer = qa_fact(rng)
    start = context.index(answer)
    return {"context": context, "question": question, "answers": [answer], "key": f"sample{i}",
            "labels": [{"start": [start], "end": [start + len(answer) - 1]}]}


def hotpot_qa(rng, i):
    context, question, answer = qa_fact(rng)
    first, second = context.split(". ", 1)
    return {"id": f"sample{i}", "question": question, "answer": answer, "type": "bridge", "level": "easy",
            "supporting_facts": {"title": ["Sample"], "sent_id": [1]},
            "context": {"title": ["Sample", "Other"], "sentences": [[first + ". ", second], ["Nothing else."]]}}


GENERATORS = {  # task -> (row maker, evaluation split, classification?)
    "20_Newsgroups_Fixed": (newsgroups, "test", True),
    "boolq": (boolq, "validation", True),
    "COPA": (copa, "validation", True),
    "CB": (nli(["entailment", "contradiction", "neutral"]), "validation", True),
    "MNLI": (nli(["entailment", "neutral", "contradiction"]), "validation_mismatched", True),
    "RTE": (nli(["entailment", "not_entailment"]), "validation", True),
    "QNLI": (qnli, "validation", True),
    "WNLI": (nli(["not_entailment", "entailment"], "sentence1", "sentence2"), "validation", True),
    "race_high": (race, "validation", True),
    "race_middle": (race, "validation", True),
    "commonsense_qa": (commonsense_qa, "validation", True),
    "swag": (swag, "validation", True),
    "newsqa": (newsqa, "validation", False),
    "squad_v2": (squad_v2, "validation", False),
    "hotpot_qa": (hotpot_qa, "validation", False),
}


# knowledge editing: (relation, rewrite template, paraphrases, {true object: [subjects]})
FACTS = [
    ("city-country", "{} is a city in", ["The city of {} is located in", "{}, a large city, lies in the country of"], {
        "France": ["Paris", "Lyon", "Marseille", "Toulouse", "Nice", "Bordeaux"],
        "Germany": ["Berlin", "Munich", "Hamburg", "Cologne", "Frankfurt", "Stuttgart"],
        "Italy": ["Rome", "Milan", "Naples", "Turin", "Florence", "Venice"],
        "Spain": ["Madrid", "Barcelona", "Seville", "Valencia", "Bilbao", "Malaga"],
        "Japan": ["Tokyo", "Osaka", "Kyoto", "Yokohama", "Nagoya", "Sapporo"],
        "England": ["London", "Manchester", "Liverpool", "Birmingham", "Leeds", "Bristol"],
        "Canada": ["Toronto", "Montreal", "Vancouver", "Calgary", "Ottawa", "Edmonton"],
        "Australia": ["Sydney", "Melbourne", "Brisbane", "Perth", "Adelaide", "Canberra"],
        "Brazil": ["Rio de Janeiro", "Sao Paulo", "Brasilia", "Salvador", "Recife", "Curitiba"],
        "Russia": ["Moscow", "Saint Petersburg", "Novosibirsk", "Kazan", "Omsk", "Samara"]}),
    ("landmark-city", "{} is located in the city of", ["You can visit {} in the city of", "{} stands in the city of"], {
        "Paris": ["the Eiffel Tower", "the Louvre", "the Arc de Triomphe", "Notre-Dame Cathedral"],
        "Rome": ["the Colosseum", "the Trevi Fountain", "the Pantheon", "the Spanish Steps"],
        "London": ["Big Ben", "Tower Bridge", "Buckingham Palace", "the British Museum"],
        "New York": ["the Statue of Liberty", "the Empire State Building", "Central Park", "Times Square"],
        "Berlin": ["the Brandenburg Gate", "the Reichstag building", "Checkpoint Charlie", "Museum Island"],
        "Barcelona": ["the Sagrada Familia", "Park Guell", "Camp Nou", "La Rambla"]}),
    ("country-language", "The main language spoken in {} is", ["In {}, most people speak", "The language of {} is"], {
        "Spanish": ["Spain", "Mexico", "Argentina", "Colombia", "Chile", "Peru"],
        "Portuguese": ["Portugal", "Brazil", "Angola", "Mozambique"],
        "German": ["Germany", "Austria"],
        "Arabic": ["Egypt", "Saudi Arabia"],
        "English": ["New Zealand", "Jamaica"]}),
]


def edits(rng):
    """100 edit requests in ROME's CounterFact format: every subject of FACTS moved to another object of its
    relation; its neighbours are up to five other subjects with the same true object."""
    out = []
    for relation, template, paraphrases, table in FACTS:
        objects = list(table)
        for true, subjects in table.items():
            for subject in subjects:
                new = rng.choice([o for o in objects if o != true])
                others = [s for s in subjects if s != subject]
                out.append({"case_id": len(out), "requested_rewrite": {
                    "prompt": template, "subject": subject, "relation_id": relation, "target_new": {"str": new},
                    "target_true": {"str": true}},
                    "paraphrase_prompts": [p.format(subject) for p in paraphrases],
                    "neighborhood_prompts": [template.format(s) for s in rng.sample(others, min(5, len(others)))],
                    "generation_prompts": [f"{subject} is famous for", f"People who travel to {subject}"]})
    return out


def content(row):
    """A row's text and label, without its running number or id."""
    return json.dumps({k: v for k, v in row.items() if k not in ("idx", "id", "key")}, sort_keys=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sample_data"))
    args = p.parse_args()
    for k, (task, (make, eval_split, closed)) in enumerate(GENERATORS.items()):
        rng = random.Random(1000 + k)
        sizes = {"train": 120, eval_split: 40} if closed else {"train": 40, eval_split: 20}
        seen = set()  # the training rows' contents: an evaluation row is drawn again until it is none of them
        for split, n in sizes.items():
            path = os.path.join(args.out, task, f"{split}.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                for i in range(n):
                    row = make(rng, i)
                    while split != "train" and content(row) in seen:
                        row = make(rng, i)
                    seen.add(content(row))
                    f.write(json.dumps(row) + "\n")
    path = os.path.join(args.out, "edits", "counterfact.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(edits(random.Random(2402)), f, indent=1)
        f.write("\n")
    print(f"wrote {len(GENERATORS)} tasks and {path} under {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
