"""The customer-service intents data set (intents.csv): slot fillers, greeting/goodbye generators, the builder."""
from .common import add_typo, expand, stylise
from .intent_templates import (CHINESE_INTENTS, GOODBYE_BYE, GOODBYE_THANKS, GREETING_FOLLOW,
                               GREETING_OPENERS, INTENT_TEMPLATES)

PRODUCTS = [
    "wireless headset", "phone case", "router", "laptop", "pair of running shoes",
    "winter jacket", "coffee maker", "smartwatch", "blender", "desk lamp",
    "bluetooth speaker", "air fryer", "backpack", "yoga mat", "tablet",
    "gaming mouse", "mechanical keyboard", "cushion cover set", "pair of jeans",
    "electric toothbrush", "baby stroller", "dress", "monitor", "SIM card",
    "phone charger", "vacuum cleaner", "hoodie", "kettle", "e-reader",
    "set of knives", "webcam", "mesh wifi kit", "pair of sneakers", "printer",
]
COLORS = ["black", "white", "navy", "red", "grey", "green", "beige", "pink",
          "silver", "blue"]
SIZES = ["S", "M", "L", "XL", "XS", "10", "42", "8.5", "medium", "large",
         "small", "128GB", "256GB"]
BRANDS = ["Lumo", "Kestrel", "Northpeak", "Vela", "Orbix", "Sunda", "Harlow",
          "Tidewell", "Zeno", "Amberline"]
WEARABLES = ["pair of jeans", "winter jacket", "hoodie", "dress", "pair of sneakers",
             "pair of running shoes", "shirt", "coat", "pair of boots", "skirt"]
WHEN = ["yesterday", "last week", "on Monday", "three days ago", "two weeks ago",
        "on the 12th", "last Friday", "10 days ago", "earlier this month",
        "over a week ago", "this morning", "on Black Friday", "a month ago",
        "last Tuesday", "on the 3rd"]
DURATION = ["5 days", "a week", "two weeks", "10 days", "three days",
            "over a week", "almost a month", "48 hours", "4 days", "ages"]
PAY = ["Visa", "Mastercard", "PayPal", "Apple Pay", "debit card", "credit card",
       "Amex", "Google Pay", "gift card", "bank transfer", "Klarna"]
CITIES = ["Manchester", "Leeds", "Austin", "Denver", "Toronto", "Dublin",
          "Glasgow", "Phoenix", "Seattle", "Bristol", "Sydney", "Calgary",
          "Cardiff", "Portland", "Melbourne", "Atlanta"]
STREETS = ["Maple Avenue", "High Street", "Oak Road", "Elm Street",
           "Baker Lane", "Station Road", "Pine Crescent", "Church Street",
           "Park Lane", "Riverside Drive", "Mill Road", "Victoria Street"]
STORES = ["the downtown store", "your Riverside branch", "the mall location",
          "the store on Main Street", "your airport shop", "the Westfield store",
          "the outlet store", "your city centre branch", "the Northgate store"]
DAYS = ["Sunday", "Saturday", "Monday", "Friday", "Sundays", "Saturdays",
        "weekends", "tomorrow", "Thursday evening", "Boxing Day morning"]
HOLIDAYS = ["Christmas Eve", "New Year's Day", "Easter Monday", "Thanksgiving",
            "Boxing Day", "the bank holiday", "Labor Day", "July 4th",
            "Good Friday", "Memorial Day", "New Year's Eve"]
PLANS = ["unlimited plan", "20GB plan", "family plan", "5GB plan",
         "basic plan", "premium plan", "50GB plan", "student plan",
         "SIM-only plan", "fibre 500 package"]
FIELDS = ["email address", "phone number", "surname", "username",
          "date of birth", "contact email", "mobile number", "display name",
          "profile photo", "recovery email"]
FIRST_NAMES = ["Sarah", "James", "Priya", "Tom", "Aisha", "Marco", "Linda",
               "Kenji", "Olivia", "Daniel", "Fatima", "Lucas", "Emma", "Raj"]
LAST_NAMES = ["Thompson", "Nguyen", "Patel", "Garcia", "O'Connor", "Kowalski",
              "Mensah", "Rossi", "Fischer", "Hughes", "Okafor", "Lee"]
OCCASIONS = ["my son's birthday", "Christmas", "our anniversary", "a wedding",
             "my mum's birthday", "the weekend", "a trip on Friday"]


def order_ref(rng):
    n = rng.randrange(100000, 99999999)
    forms = [
        "order #{}".format(rng.randrange(100000, 999999)),
        "order {}".format(n),
        "order number {}".format(n),
        "order no. A{}".format(rng.randrange(1000000, 9999999)),
        "order ORD-{}".format(rng.randrange(10000, 99999)),
        "order #{}".format(rng.randrange(10000000, 99999999)),
        "my order ({})".format(rng.randrange(1000000, 9999999)),
    ]
    return rng.choice(forms)


def money(rng):
    forms = ["${}".format(rng.randrange(5, 400)),
             "${}.{:02d}".format(rng.randrange(5, 300), rng.randrange(0, 100)),
             "£{}".format(rng.randrange(5, 300)),
             "{} dollars".format(rng.randrange(10, 250)),
             "€{}.{:02d}".format(rng.randrange(5, 200), rng.randrange(0, 100))]
    return rng.choice(forms)


def intent_slot(rng, name):
    if name == "order":
        return order_ref(rng)
    if name == "oid":
        return str(rng.randrange(100000, 9999999))
    if name == "product":
        return rng.choice(PRODUCTS)
    if name == "flat":
        return str(rng.randrange(1, 60))
    if name == "wearable":
        return rng.choice(WEARABLES)
    if name == "color":
        return rng.choice(COLORS)
    if name == "size":
        return rng.choice(SIZES)
    if name == "brand":
        return rng.choice(BRANDS)
    if name == "when":
        return rng.choice(WHEN)
    if name == "duration":
        return rng.choice(DURATION)
    if name == "pay":
        return rng.choice(PAY)
    if name == "city":
        return rng.choice(CITIES)
    if name == "address":
        return "{} {}, {}".format(rng.randrange(2, 240), rng.choice(STREETS),
                                  rng.choice(CITIES))
    if name == "street":
        return rng.choice(STREETS)
    if name == "zip":
        return rng.choice(["{:05d}".format(rng.randrange(10000, 99999)),
                           "M{} {}{}".format(rng.randrange(1, 40),
                                             rng.randrange(1, 9),
                                             rng.choice(["AB", "LT", "QW", "RS", "HD"]))])
    if name == "store":
        return rng.choice(STORES)
    if name == "day":
        return rng.choice(DAYS)
    if name == "holiday":
        return rng.choice(HOLIDAYS)
    if name == "plan":
        return rng.choice(PLANS)
    if name == "field":
        return rng.choice(FIELDS)
    if name == "amount":
        return money(rng)
    if name == "name":
        return "{} {}".format(rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))
    if name == "phone":
        return rng.choice(["07{} {}".format(rng.randrange(100, 999), rng.randrange(100000, 999999)),
                           "({}) {}-{}".format(rng.randrange(200, 999), rng.randrange(200, 999), rng.randrange(1000, 9999)),
                           "+44 7{} {}".format(rng.randrange(100, 999), rng.randrange(100000, 999999))])
    if name == "minutes":
        return str(rng.choice([25, 30, 40, 45, 50, 55, 60, 70, 90]))
    if name == "years":
        return rng.choice(["5", "6", "ten", "8", "12", "15", "three"])
    if name == "occasion":
        return rng.choice(OCCASIONS)
    if name == "speed":
        return rng.choice(["500 Mbps", "300 meg", "1 gig", "100Mb", "200 Mbps"])
    if name == "slow":
        return rng.choice(["about 10", "barely 5 Mbps", "under 20", "like 2 meg", "less than 30"])
    raise KeyError(name)


INTENT_EN_PER_LABEL = 72


def gen_greeting(rng):
    o = rng.choice(GREETING_OPENERS)
    f = rng.choice(GREETING_FOLLOW)
    punct = rng.choice(["", "!", ".", "!!", " :)", ","])
    if f:
        text = "{}{} {}".format(o, "," if punct in ("", ",", " :)") else punct, f)
    else:
        text = o + (punct if punct != "," else "")
    if rng.random() < 0.6:
        text = text[0].upper() + text[1:]
    return text


def gen_goodbye(rng):
    t = rng.choice(GOODBYE_THANKS)
    b = rng.choice(GOODBYE_BYE)
    if t and rng.random() < 0.25:
        text = t + rng.choice(["!", ".", ""])
    elif t:
        text = "{}{} {}{}".format(t, rng.choice([",", ".", "!", " -"]), b, rng.choice(["", "!", ".", " :)"]))
    else:
        text = b + rng.choice(["", "!", ".", " :)"])
    if rng.random() < 0.6:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.06:
        text = add_typo(rng, text)
    return text


def build_intents(rng):
    rows = []
    seen = set()
    labels = list(INTENT_TEMPLATES) + ["greeting", "goodbye"]
    for label in labels:
        got = []
        if label in ("greeting", "goodbye"):
            gen = gen_greeting if label == "greeting" else gen_goodbye
            tries = 0
            while len(got) < INTENT_EN_PER_LABEL and tries < 20000:
                tries += 1
                t = gen(rng)
                if t.lower() not in seen:
                    seen.add(t.lower())
                    got.append(t)
        else:
            templates = INTENT_TEMPLATES[label]
            order = []
            tries = 0
            while len(got) < INTENT_EN_PER_LABEL and tries < 20000:
                tries += 1
                if not order:
                    order = list(templates)
                    rng.shuffle(order)
                t = expand(rng, order.pop(), intent_slot)
                t = stylise(rng, t)
                if t.lower() not in seen:
                    seen.add(t.lower())
                    got.append(t)
        assert len(got) == INTENT_EN_PER_LABEL, (label, len(got))
        for t in CHINESE_INTENTS[label]:
            assert t not in seen
            seen.add(t)
            got.append(t)
        rows.extend((t, label) for t in got)
    rng.shuffle(rows)
    return rows
