"""The shipped corpus's grammar (``corpus/synth``): its tables and its generator.

``scripts/make_corpus.py`` writes the corpus with ``generate``; ``fairseq_vae.synth.grammar``
builds its recogniser from the same tables. Every sentence is produced by first drawing four
independent factors uniformly at random,

    topic      sports | food | weather | travel
    sentiment  positive | negative
    tense      past | present | future
    number     singular | plural   (grammatical number of the sentence's subject)

and then realising them with a small probabilistic grammar. There are four templates:

    action      [TIME ,] SUBJ_AGENT [MANNER] VERB OBJ [PLACE] [TIME] [CLAUSE]
                "the tired fans angrily watched a dull match at the stadium last night ."
    description SUBJ_THING BE [DEGREE] ADJ [PLACE] [TIME]
                "these meals will be really delicious at the restaurant ."
    feeling     SUBJ_AGENT BE [DEGREE] FEELING about OBJ [PLACE] [TIME]
                "my neighbor is very worried about the storms these days ."
    existential [TIME ,] there BE DET [ADJ] THING [PLACE] [TIME]
                "next week , there will be some freezing showers near the coast ."

How each factor shows up in the surface string:

* topic picks the agent nouns, thing nouns, verbs, places and neutral adjectives;
* sentiment picks evaluative adjectives, feeling words, manner adverbs, the sentiment verbs
  ("love"/"hate", ...) and the closing clause; every sentence carries at least one such cue;
* tense picks the verb form (past, present simple, "will" + base) and the time adverbials;
* number picks the subject's determiner, noun form, verb agreement and the clause pronoun.

Objects get their own random number so that noun plurality alone does not reveal the factor;
determiners such as "the" and "my" are shared by both numbers for the same reason. Sentences
are lowercase, punctuation is space-separated and every line ends in " .". Sentences have
6-20 words (punctuation not counted); the word vocabulary is a few hundred types.
"""

TOPICS = ("sports", "food", "weather", "travel")
SENTIMENTS = ("positive", "negative")
TENSES = ("past", "present", "future")
NUMBERS = ("singular", "plural")
FACTOR_NAMES = ("topic", "sentiment", "tense", "number")

MIN_WORDS = 6
MAX_WORDS = 20

# Nouns are (singular, plural) pairs, verbs are (base, third person singular, past) triples.
AGENTS = {
    "sports": [
        ("player", "players"),
        ("team", "teams"),
        ("coach", "coaches"),
        ("fan", "fans"),
        ("runner", "runners"),
        ("goalkeeper", "goalkeepers"),
        ("captain", "captains"),
        ("referee", "referees"),
    ],
    "food": [
        ("chef", "chefs"),
        ("cook", "cooks"),
        ("waiter", "waiters"),
        ("baker", "bakers"),
        ("customer", "customers"),
        ("guest", "guests"),
        ("child", "children"),
        ("family", "families"),
    ],
    "weather": [
        ("farmer", "farmers"),
        ("sailor", "sailors"),
        ("gardener", "gardeners"),
        ("forecaster", "forecasters"),
        ("hiker", "hikers"),
        ("fisherman", "fishermen"),
        ("shepherd", "shepherds"),
        ("neighbor", "neighbors"),
    ],
    "travel": [
        ("tourist", "tourists"),
        ("traveler", "travelers"),
        ("guide", "guides"),
        ("passenger", "passengers"),
        ("backpacker", "backpackers"),
        ("driver", "drivers"),
        ("visitor", "visitors"),
        ("pilot", "pilots"),
    ],
}

THINGS = {
    "sports": [
        ("match", "matches"),
        ("game", "games"),
        ("race", "races"),
        ("goal", "goals"),
        ("season", "seasons"),
        ("final", "finals"),
        ("tournament", "tournaments"),
        ("training session", "training sessions"),
        ("trophy", "trophies"),
        ("performance", "performances"),
    ],
    "food": [
        ("meal", "meals"),
        ("dish", "dishes"),
        ("cake", "cakes"),
        ("pie", "pies"),
        ("sandwich", "sandwiches"),
        ("soup", "soups"),
        ("dessert", "desserts"),
        ("curry", "curries"),
        ("breakfast", "breakfasts"),
        ("salad", "salads"),
    ],
    "weather": [
        ("storm", "storms"),
        ("forecast", "forecasts"),
        ("wind", "winds"),
        ("cloud", "clouds"),
        ("sunset", "sunsets"),
        ("shower", "showers"),
        ("frost", "frosts"),
        ("breeze", "breezes"),
        ("heatwave", "heatwaves"),
        ("morning", "mornings"),
    ],
    "travel": [
        ("trip", "trips"),
        ("flight", "flights"),
        ("hotel", "hotels"),
        ("journey", "journeys"),
        ("train", "trains"),
        ("museum", "museums"),
        ("beach", "beaches"),
        ("tour", "tours"),
        ("ticket", "tickets"),
        ("city", "cities"),
    ],
}

TOPIC_VERBS = {
    "sports": [
        ("win", "wins", "won"),
        ("play", "plays", "played"),
        ("watch", "watches", "watched"),
        ("lose", "loses", "lost"),
        ("train for", "trains for", "trained for"),
        ("cheer at", "cheers at", "cheered at"),
    ],
    "food": [
        ("cook", "cooks", "cooked"),
        ("bake", "bakes", "baked"),
        ("taste", "tastes", "tasted"),
        ("order", "orders", "ordered"),
        ("eat", "eats", "ate"),
        ("serve", "serves", "served"),
    ],
    "weather": [
        ("predict", "predicts", "predicted"),
        ("watch", "watches", "watched"),
        ("expect", "expects", "expected"),
        ("report", "reports", "reported"),
        ("notice", "notices", "noticed"),
        ("wait for", "waits for", "waited for"),
    ],
    "travel": [
        ("book", "books", "booked"),
        ("visit", "visits", "visited"),
        ("explore", "explores", "explored"),
        ("plan", "plans", "planned"),
        ("take", "takes", "took"),
        ("photograph", "photographs", "photographed"),
    ],
}

SENTIMENT_VERBS = {
    "positive": [
        ("love", "loves", "loved"),
        ("enjoy", "enjoys", "enjoyed"),
        ("praise", "praises", "praised"),
        ("celebrate", "celebrates", "celebrated"),
    ],
    "negative": [
        ("hate", "hates", "hated"),
        ("dread", "dreads", "dreaded"),
        ("complain about", "complains about", "complained about"),
        ("regret", "regrets", "regretted"),
    ],
}

PLACES = {
    "sports": ["at the stadium", "on the field", "in the gym", "at the arena", "on the track"],
    "food": ["in the kitchen", "at the restaurant", "at the market", "in the cafe", "at home"],
    "weather": ["in the garden", "on the hills", "over the valley", "near the coast", "up north"],
    "travel": ["at the airport", "in the old town", "on the train", "at the station", "abroad"],
}

# Neutral adjectives describe agents only, so they carry topic but never sentiment.
NEUTRAL_ADJECTIVES = {
    "sports": ["young", "tall", "veteran", "local"],
    "food": ["hungry", "famous", "busy", "local"],
    "weather": ["old", "careful", "tired", "local"],
    "travel": ["foreign", "young", "curious", "busy"],
}

# Evaluative adjectives: a shared pool plus a topic-specific pool, so that sentiment words
# are partly but not entirely confounded with topic.
EVALUATIVE_ADJECTIVES = {
    "positive": ["great", "lovely", "wonderful", "excellent", "perfect", "pleasant", "amazing"],
    "negative": ["terrible", "awful", "dreadful", "poor", "horrible", "miserable", "dull"],
}
TOPIC_EVALUATIVE_ADJECTIVES = {
    ("sports", "positive"): ["thrilling", "exciting", "brilliant"],
    ("sports", "negative"): ["sloppy", "boring", "embarrassing"],
    ("food", "positive"): ["delicious", "tasty", "fresh"],
    ("food", "negative"): ["bland", "stale", "greasy"],
    ("weather", "positive"): ["sunny", "mild", "calm"],
    ("weather", "negative"): ["freezing", "stormy", "gloomy"],
    ("travel", "positive"): ["relaxing", "scenic", "comfortable"],
    ("travel", "negative"): ["crowded", "exhausting", "delayed"],
}

FEELINGS = {
    "positive": ["happy", "excited", "thrilled", "pleased", "glad", "hopeful"],
    "negative": ["worried", "upset", "angry", "nervous", "unhappy", "annoyed"],
}

MANNER_ADVERBS = {
    "positive": ["happily", "proudly", "eagerly", "gladly", "cheerfully"],
    "negative": ["sadly", "reluctantly", "angrily", "wearily", "nervously"],
}

DEGREE_ADVERBS = ["very", "really", "quite", "truly", "rather", "so"]

TIME_PHRASES = {
    "past": ["yesterday", "last week", "last night", "last summer", "two days ago"],
    "present": ["today", "every day", "every weekend", "these days", "now"],
    "future": ["tomorrow", "next week", "next summer", "soon", "in two days"],
}

DETERMINERS = {
    "singular": ["the", "a", "this", "that", "my", "our", "every"],
    "plural": ["the", "these", "those", "some", "many", "two", "my", "our", "several"],
}

# "every" and "the" read oddly after "there is", so existentials use indefinite determiners:
# "a"/"an" in the singular, these in the plural.
EXISTENTIAL_DETERMINERS = ["some", "many", "two", "several"]

PRONOUNS = {"singular": ["he", "she"], "plural": ["they"]}
CONJUNCTIONS = ["and", "so", "because"]

BE = {
    ("past", "singular"): "was",
    ("past", "plural"): "were",
    ("present", "singular"): "is",
    ("present", "plural"): "are",
    ("future", "singular"): "will be",
    ("future", "plural"): "will be",
}

TEMPLATES = ("action", "description", "feeling", "existential")


def sample_factors(rng):
    """Draw one value per factor, uniformly and independently."""
    return {
        "topic": rng.choice(TOPICS),
        "sentiment": rng.choice(SENTIMENTS),
        "tense": rng.choice(TENSES),
        "number": rng.choice(NUMBERS),
    }


def evaluative_adjective(topic, sentiment, rng):
    pool = EVALUATIVE_ADJECTIVES[sentiment] + TOPIC_EVALUATIVE_ADJECTIVES[(topic, sentiment)]
    return rng.choice(pool)


def noun_phrase(noun, number, rng, adjective=None):
    """Determiner + optional adjective + noun, with the determiner agreeing in number."""
    det = rng.choice(DETERMINERS[number])
    words = ([adjective] if adjective else []) + [noun[0] if number == "singular" else noun[1]]
    if det == "a" and words[0][0] in "aeiou":
        det = "an"
    return [det] + words


def conjugate(verb, tense, number, adverb=None):
    """Finite verb group; a manner adverb goes between "will" and the base in the future."""
    base, third, past = verb
    pre = [adverb] if adverb else []
    if tense == "past":
        return pre + [past]
    if tense == "present":
        return pre + [third if number == "singular" else base]
    return ["will"] + pre + [base]


def _action(f, rng):
    topic, sentiment, tense, number = f["topic"], f["sentiment"], f["tense"], f["number"]
    cues = 0
    front_time = rng.random() < 0.2
    words = [rng.choice(TIME_PHRASES[tense]), ","] if front_time else []
    adj = rng.choice(NEUTRAL_ADJECTIVES[topic]) if rng.random() < 0.3 else None
    words += noun_phrase(rng.choice(AGENTS[topic]), number, rng, adj)
    manner = None
    if rng.random() < 0.3:
        manner = rng.choice(MANNER_ADVERBS[sentiment])
        cues += 1
    if rng.random() < 0.4:
        verb = rng.choice(SENTIMENT_VERBS[sentiment])
        cues += 1
    else:
        verb = rng.choice(TOPIC_VERBS[topic])
    words += conjugate(verb, tense, number, manner)
    clause = None
    if rng.random() < 0.35:
        clause = [rng.choice(CONJUNCTIONS), rng.choice(PRONOUNS[number])]
        clause += BE[(tense, number)].split() + [rng.choice(FEELINGS[sentiment])]
        cues += 1
    obj_adj = None
    # Guarantee at least one sentiment cue so the label is always recoverable from the text.
    if cues == 0 or rng.random() < 0.4:
        obj_adj = evaluative_adjective(topic, sentiment, rng)
    words += noun_phrase(rng.choice(THINGS[topic]), rng.choice(NUMBERS), rng, obj_adj)
    if rng.random() < 0.4:
        words += rng.choice(PLACES[topic]).split()
    if not front_time and rng.random() < 0.4:
        words += rng.choice(TIME_PHRASES[tense]).split()
    if clause:
        words += clause
    return words


def _description(f, rng):
    topic, sentiment, tense, number = f["topic"], f["sentiment"], f["tense"], f["number"]
    words = noun_phrase(rng.choice(THINGS[topic]), number, rng)
    words += BE[(tense, number)].split()
    if rng.random() < 0.5:
        words.append(rng.choice(DEGREE_ADVERBS))
    words.append(evaluative_adjective(topic, sentiment, rng))
    if rng.random() < 0.6:
        words += rng.choice(PLACES[topic]).split()
    if rng.random() < 0.6:
        words += rng.choice(TIME_PHRASES[tense]).split()
    return words


def _feeling(f, rng):
    topic, sentiment, tense, number = f["topic"], f["sentiment"], f["tense"], f["number"]
    adj = rng.choice(NEUTRAL_ADJECTIVES[topic]) if rng.random() < 0.3 else None
    words = noun_phrase(rng.choice(AGENTS[topic]), number, rng, adj)
    words += BE[(tense, number)].split()
    if rng.random() < 0.5:
        words.append(rng.choice(DEGREE_ADVERBS))
    words += [rng.choice(FEELINGS[sentiment]), "about"]
    obj_adj = evaluative_adjective(topic, sentiment, rng) if rng.random() < 0.3 else None
    words += noun_phrase(rng.choice(THINGS[topic]), rng.choice(NUMBERS), rng, obj_adj)
    if rng.random() < 0.4:
        words += rng.choice(PLACES[topic]).split()
    if rng.random() < 0.4:
        words += rng.choice(TIME_PHRASES[tense]).split()
    return words


def _existential(f, rng):
    topic, sentiment, tense, number = f["topic"], f["sentiment"], f["tense"], f["number"]
    front_time = rng.random() < 0.5
    words = [rng.choice(TIME_PHRASES[tense]), ","] if front_time else []
    words += ["there"] + BE[(tense, number)].split()
    adj = evaluative_adjective(topic, sentiment, rng)
    noun = rng.choice(THINGS[topic])
    if number == "singular":
        words += ["an" if adj[0] in "aeiou" else "a", adj, noun[0]]
    else:
        words += [rng.choice(EXISTENTIAL_DETERMINERS), adj, noun[1]]
    words += rng.choice(PLACES[topic]).split()
    if not front_time and rng.random() < 0.5:
        words += rng.choice(TIME_PHRASES[tense]).split()
    return words


REALISERS = {
    "action": _action,
    "description": _description,
    "feeling": _feeling,
    "existential": _existential,
}


def count_words(tokens):
    return sum(1 for t in tokens if t not in (",", "."))


def realise(factors, rng):
    """Turn a factor dict into one sentence string ending in " .".

    Templates draw optional parts at random, so a draw can fall outside the length bounds;
    redrawing (rather than truncating) keeps every sentence grammatical.
    """
    while True:
        template = rng.choice(TEMPLATES)
        tokens = " ".join(REALISERS[template](factors, rng)).split()
        if MIN_WORDS <= count_words(tokens) <= MAX_WORDS:
            return " ".join(tokens + ["."])


def generate(n, rng):
    """Return n (sentence, factors) pairs."""
    out = []
    for _ in range(n):
        factors = sample_factors(rng)
        out.append((realise(factors, rng), factors))
    return out
