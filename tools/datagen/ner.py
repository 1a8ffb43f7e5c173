"""The NER data set (ner/*.conll, CoNLL-2003 layout, BIO / IOB2 tags): entity pools, templates, POS/chunk tags, splits."""
import re
from collections import Counter

from .sentiment import MONTHS

# Entity pools: (train/seen pool, unseen pool used only in dev/test)
FIRST = (["John", "Maria", "Wei", "Aisha", "Carlos", "Priya", "Olga", "Kwame",
          "Yuki", "Fatima", "Liam", "Sofia", "Hiroshi", "Ngozi", "Lars", "Elena",
          "Omar", "Chloe", "Mateo", "Ingrid", "Rahul", "Amara", "Tomasz", "Leila",
          "Daniel", "Hannah", "Ravi", "Camille", "Diego", "Mei", "Peter", "Grace"],
         ["Bjorn", "Zanele", "Akira", "Lucia", "Emeka", "Sven", "Nadia", "Joaquin",
          "Anneke", "Tariq", "Valentina", "Kofi", "Ayesha", "Pavel"])
LAST = (["Carter", "Okafor", "Chen", "Haddad", "Silva", "Sharma", "Petrova",
         "Mensah", "Tanaka", "Rahman", "O'Brien", "Novak", "Lindqvist", "Rossi",
         "Kowalski", "Nguyen", "Schmidt", "Alvarez", "Dubois", "Hughes",
         "Fischer", "Moreno", "Kim", "Andersen", "Walker", "Adeyemi"],
        ["Takahashi", "Oyelaran", "Castellanos", "Bergstrom", "Mwangi",
         "Dimitriou", "Quispe", "Halvorsen", "Benali", "Sokolova", "Ferreira",
         "Whitfield"])
MULTI_PER = (["Pieter van der Berg", "Ana Maria Lopez", "Mary Ann Collins",
              "Ludwig van Houten", "Jean Paul Martin", "Abdul Karim Said"],
             ["Hendrik de Vries", "Maria Jose Pardo", "Li Na Zhou",
              "Carl Johan Ek"])
COMPANY = (["Crestline Motors", "Silverleaf Insurance", "Meridian Health",
            "Redwood Capital Partners", "Summit Energy",
            "Greenfield Foods", "Ironbridge Steel", "Vertex Pharma",
            "Stonegate Construction",
            "Halden Chemicals", "Brightline Rail", "Tidewater Utilities",
            "Sable Mining", "Polaris Motors"],
           ["Marigold Cosmetics", "Thornbury Insurance",
            "Blackwater Foods", "Heliotrope Energy", "Granite Peak Holdings",
            "Saffron Hotels"])
# domain-specific ORG pools (kept disjoint from COMPANY and from each other)
MEDIA = (["Reuters", "Copperleaf Media", "Quill Publishing", "Global News Network"],
         ["Channel Nine News", "Meridian Radio"])
MAKER = (["Aurora Devices", "Nimbus Cloud", "Kestrel Software", "Vantage Labs",
          "Tessera Electronics"],
         ["Kairos Robotics", "Lodestar Semiconductors"])
SHOP = (["Atlas Retail", "Lumen Electronics", "Brightmart", "Cornerstone Home",
         "TechNest", "Harlow & Hayes"],
        ["Pebble and Pine", "GadgetGrove", "Marlin Outfitters"])
BANK = (["Northwind Bank", "Evergreen Bank", "Harbourside Credit Union",
         "First Meridian Bank"],
        ["Cinderford Bank", "Pennant Savings Bank"])
TEL = (["Bluepeak Telecom", "Maple Leaf Telecom", "Aurora Mobile", "Skyline Broadband"],
       ["Obelisk Networks", "Vireo Mobile"])
AIR = (["Orion Airlines", "Skyward Air", "Atlantic Jet", "Meridian Airways"],
       ["Westwind Airways", "Condor Pacific"])
COURIER = (["Falcon Express", "Harbor Logistics Group", "Pacifica Shipping",
            "SwiftPost", "Parcelink"],
           ["Zenith Couriers", "Redline Delivery"])
CLUB = (["Real Madrid", "Manchester United", "Bayern Munich", "Ajax",
         "Boca Juniors", "Celtic", "Juventus", "Galatasaray", "Porto",
         "Chicago Bulls", "New York Yankees"],
        ["Olympique Lyon", "Benfica", "River Plate", "Feyenoord",
         "Boston Celtics", "Dynamo Kyiv"])
INST = (["United Nations", "European Union", "World Bank",
         "International Monetary Fund", "World Health Organization",
         "Federal Reserve", "Red Cross", "International Energy Agency",
         "Bank of England"],
        ["European Central Bank", "African Union", "Asian Development Bank",
         "Bank of Japan", "World Trade Organization"])
CITY = (["New York", "London", "Berlin", "Lagos", "Tokyo", "Sao Paulo", "Mumbai",
         "Cape Town", "Paris", "Buenos Aires", "Hong Kong", "Los Angeles",
         "Nairobi", "Oslo", "Rio de Janeiro", "Manchester", "Toronto",
         "Melbourne", "Dubai", "Singapore", "Mexico City", "Istanbul", "Cairo",
         "Madrid", "Chicago", "Warsaw", "Seoul", "Geneva"],
        ["Kuala Lumpur", "Ho Chi Minh City", "Lima", "Accra", "Reykjavik",
         "Montevideo", "Tbilisi", "Helsinki", "San Diego", "Salt Lake City"])
COUNTRY = (["Germany", "Brazil", "South Korea", "France", "Japan", "Canada",
            "India", "Kenya", "Poland", "Sweden", "Italy", "Australia",
            "South Africa", "Mexico", "Egypt", "Texas", "California", "Scotland"],
           ["Peru", "Ghana", "Vietnam", "Chile", "Bavaria", "Quebec", "New Zealand"])
NAT = (["German", "French", "Brazilian", "Japanese", "Kenyan", "Indian",
        "Canadian", "Mexican", "Australian", "Nigerian", "Swedish", "Korean",
        "Italian", "Spanish", "Chinese", "Polish", "Egyptian", "Dutch", "British",
        "American"],
       ["Chilean", "Ghanaian", "Vietnamese", "Peruvian", "Icelandic",
        "Georgian", "Finnish", "Uruguayan"])
NATPL = (["Germans", "Brazilians", "Canadians", "Australians", "Italians",
          "Americans", "Indians", "Swedes"],
         ["Chileans", "Finns", "Ghanaians", "Peruvians"])
SPORT = (["World Cup", "Olympic Games", "Champions League", "Tour de France",
          "Super Bowl", "Wimbledon", "Australian Open", "Davis Cup"],
         ["Copa America", "Ryder Cup", "Dakar Rally", "Winter Olympics"])
FAIR = (["Web Summit", "Mobile World Congress", "Frankfurt Book Fair",
         "Consumer Electronics Show"],
        ["Tokyo Game Show", "Paris Air Show"])
SALE = (["Black Friday", "Cyber Monday", "Singles Day"], ["Boxing Day"])
PRODUCT = (["Galaxy Phone", "Nimbus X5", "AeroBook Pro", "Pixelon 7",
            "StreamBox Mini", "Volt EV", "Echo Buds", "Zenith Watch 3",
            "Corsa Hybrid", "SkyPlan Unlimited", "HomeHub 2", "Fibre Max",
            "Lumen TV", "PowerCell 10"],
           ["Quasar Tab", "Orbit Router 6", "Aria Earbuds", "TerraBook Air",
            "Nova Fold", "Helix Scooter"])

ENTITY_SLOTS = {
    "PER": "PER", "ORG": "ORG", "CLUB": "ORG", "INST": "ORG", "LOC": "LOC",
    "SHOP": "ORG", "MEDIA": "ORG", "CITY": "LOC", "COUNTRY": "LOC",
    "SPORT": "MISC", "FAIR": "MISC", "SALE": "MISC", "MAKER": "ORG", "BANK": "ORG", "TEL": "ORG", "AIR": "ORG", "COURIER": "ORG",
    "NAT": "MISC", "NATPL": "MISC", "EVT": "MISC", "PROD": "MISC",
}

NER_TRAIN_TEMPLATES = [
    "{PER} , chief executive of {ORG} , said on {DAY} that the company would open a new office in {CITY} .",
    "{MAKER} shares rose {PCT} percent in {LOC} after the company reported strong sales of its {PROD} .",
    "The {NAT} government has asked {ORG} to explain delays in its {LOC} operations .",
    "{PER} scored twice as {CLUB} beat {CLUB} 3 - 1 on {DAY} .",
    "{PER} , a {NAT} engineer based in {LOC} , joined {ORG} last year .",
    "Police in {CITY} said on {DAY} they had arrested two men in connection with the robbery .",
    "{ORG} agreed to buy {ORG} for {NUM} million dollars , the companies said in a joint statement .",
    "Flights between {CITY} and {CITY} were cancelled because of heavy snow , {AIR} said .",
    "{PER} will travel to {LOC} next week to meet {NAT} officials ahead of the {EVT} .",
    "Speaking in {LOC} , {PER} said the {EVT} would bring thousands of visitors to the region .",
    "The {INST} warned that growth in {LOC} could slow sharply next year .",
    "The {PROD} goes on sale in {LOC} on {DAY} , {MAKER} announced .",
    "{PER} told {MEDIA} that {NAT} exporters were worried about new tariffs .",
    "{NAT} champion {PER} won the {SPORT} title for the second time .",
    "{ORG} reported a quarterly loss and said {PER} would step down as chairman .",
    "Thousands of people gathered in central {CITY} on {DAY} to protest against rising prices .",
    "{PER} , who grew up in {LOC} , is the first {NAT} woman to lead {ORG} .",
    "According to {MAKER} , sales of the {PROD} fell {PCT} percent in {MONTH} .",
    "{MAKER} is recalling thousands of {PROD} devices sold in {LOC} .",
    "Foreign ministers from {COUNTRY} and {COUNTRY} met in {CITY} to discuss the border dispute .",
    "{CLUB} coach {PER} said his team was ready for the {SPORT} .",
    "{SHOP} opened its first store in {CITY} , creating about {NUM} jobs .",
    "Heavy rain caused flooding across northern {COUNTRY} , officials said on {DAY} .",
    "{PER} and {PER} met in {LOC} to sign the agreement .",
    "The {INST} said {NAT} inflation rose to {PCT} percent in {MONTH} .",
    "{PER} , a spokesman for {ORG} , declined to comment .",
    "Tickets for the {SPORT} in {CITY} sold out within hours .",
    "{ORG} hired {PER} from rival {ORG} to run its {LOC} division .",
    "Most {NATPL} now shop online at least once a week , a survey by {MEDIA} found .",
    "{PER} ( {COUNTRY} ) finished second in the men 's final at the {SPORT} .",
    "The {INST} approved a loan of {NUM} million dollars for {COUNTRY} .",
    "{COUNTRY} beat {COUNTRY} 2 - 0 in a friendly played in {CITY} .",
    "Hi , my name is {PER} and I ordered a {PROD} from {SHOP} last {DAY} .",
    "My {PROD} stopped working after the update , can someone from {SHOP} help ?",
    "I moved from {CITY} to {CITY} , please update my delivery address .",
    "{PER} from your {CITY} store told me the {PROD} would be back in stock this week .",
    "Can you ship to {LOC} ? I am visiting from {LOC} for the {EVT} .",
    "I paid with my {BANK} card but the order was cancelled .",
    "Please ask {PER} to call me back about my {TEL} account .",
    "The courier from {COURIER} left my parcel at the wrong house in {CITY} .",
    "Is the {PROD} compatible with the {PROD} ?",
    "Thanks {PER} , you solved my problem with the {PROD} !",
    "I bought this {PROD} at the {CITY} airport and the charger is missing .",
    "Does the {NAT} version of the {PROD} work in {LOC} ?",
    "My partner {PER} placed the order but it was sent to {LOC} by mistake .",
    "I have been a customer of {TEL} since 2015 and this is the worst service I have received .",
    "Dear {SHOP} team , my {PROD} was charged twice on my {BANK} credit card .",
    "The package arrived two days late and the box was damaged .",
    "Prices rose sharply in the third quarter , analysts said .",
    "I still have not received my refund .",
    "{PER} said the {NAT} market remained difficult but sales of the {PROD} were improving .",
    "Is there a {SHOP} store near {CITY} where I can pick up my {PROD} ?",
    "I bought the {PROD} in the {SALE} sale but {SHOP} charged me the full price .",
    "{SHOP} said online orders doubled during {SALE} , with the {PROD} the best seller .",
]

NER_HELDOUT_TEMPLATES = [
    "In an interview with {MEDIA} , {PER} said {NAT} voters were tired of the old parties .",
    "{MAKER} , which is based in {LOC} , will supply {PROD} units to {TEL} .",
    "{PER} missed the {SPORT} because of a knee injury , {CLUB} said on {DAY} .",
    "Hello , this is {PER} again , my {PROD} still will not connect to the {TEL} network .",
    "A spokeswoman for the {INST} in {LOC} confirmed the figures .",
    "Rescue teams searched the mountains near {LOC} for the missing {NAT} climbers .",
    "{PER} , {PER} and {PER} were named in the {NAT} squad for the {SPORT} .",
    "Could you tell {PER} that I am still waiting for the refund from {SHOP} ?",
    "The {EVT} will be held in {LOC} for the first time since 1998 .",
    "Officials at {MAKER} said the {PROD} had passed all safety tests in {LOC} .",
    "{PER} , 34 , left {LOC} for {LOC} in {MONTH} .",
    "I ordered two {PROD} units from the {CITY} warehouse but only one arrived .",
    "Several {NATPL} were among the passengers on the {AIR} flight to {LOC} .",
    "Can {SHOP} still deliver my {SALE} order to {CITY} before the weekend ?",
    "Why does my {TEL} bill show roaming charges from {LOC} when I never left {LOC} ?",
]

DAYS_NER = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS_NER = MONTHS

POS_LEX = """
the/DT a/DT an/DT this/DT that/IN these/DT all/DT every/DT no/DT another/DT
of/IN in/IN on/IN at/IN for/IN from/IN with/IN by/IN about/IN after/IN against/IN
between/IN across/IN since/IN near/IN among/IN because/IN as/IN like/IN if/IN
to/TO and/CC but/CC or/CC
i/PRP he/PRP she/PRP it/PRP we/PRP they/PRP you/PRP me/PRP
my/PRP$ his/PRP$ her/PRP$ its/PRP$ their/PRP$ your/PRP$ our/PRP$
who/WP which/WDT where/WRB why/WRB
is/VBZ are/VBP was/VBD were/VBD be/VB been/VBN am/VBP have/VBP has/VBZ had/VBD
does/VBZ do/VBP can/MD could/MD will/MD would/MD not/RB still/RB
said/VBD says/VBZ say/VBP told/VBD asked/VBD found/VBD met/VBD won/VBD left/VBD
beat/VBD rose/VBD fell/VBD bought/VBD grew/VBD sold/VBD went/VBD joined/VBD
opened/VBD hired/VBD scored/VBD gathered/VBD caused/VBD reported/VBD agreed/VBD
announced/VBD warned/VBD approved/VBD arrested/VBD declined/VBD placed/VBD
ordered/VBD finished/VBD moved/VBD missed/VBD confirmed/VBD searched/VBD
arrived/VBD received/VBD named/VBD held/VBN cancelled/VBN played/VBN sent/VBN
passed/VBN stopped/VBD solved/VBD charged/VBN damaged/VBN based/VBN visiting/VBG
waiting/VBG recalling/VBG improving/VBG rising/VBG speaking/VBG creating/VBG
open/VB explain/VB buy/VB travel/VB meet/VB bring/VB slow/VB lead/VB step/VB
protest/VB discuss/VB sign/VB comment/VB run/VB shop/VB help/VB update/VB
ask/VB call/VB work/VB pick/VB supply/VB connect/VB tell/VB show/VBP
goes/VBZ remained/VBD
company/NN office/NN government/NN engineer/NN year/NN week/NN robbery/NN
statement/NN snow/NN officials/NNS visitors/NNS region/NN growth/NN sale/NN
exporters/NNS tariffs/NNS champion/NN title/NN time/NN loss/NN chairman/NN
people/NNS prices/NNS woman/NN sales/NNS thousands/NNS devices/NNS ministers/NNS
border/NN dispute/NN coach/NN team/NN store/NN jobs/NNS rain/NN flooding/NN
agreement/NN inflation/NN spokesman/NN spokeswoman/NN hours/NNS division/NN
survey/NN men/NNS final/NN loan/NN friendly/NN name/NN update/NN someone/NN
delivery/NN address/NN stock/NN card/NN order/NN account/NN courier/NN
parcel/NN house/NN problem/NN airport/NN charger/NN version/NN husband/NN partner/NN
mistake/NN customer/NN service/NN package/NN days/NNS box/NN quarter/NN
analysts/NNS refund/NN market/NN dollars/NNS percent/NN interview/NN
voters/NNS parties/NNS units/NNS injury/NN knee/NN network/NN figures/NNS
teams/NNS mountains/NNS climbers/NNS squad/NN tests/NNS warehouse/NN
passengers/NNS flight/NN bill/NN charges/NNS roaming/NN rival/JJ
new/JJ heavy/JJ quarterly/JJ first/JJ second/JJ third/JJ central/JJ strong/JJ
northern/JJ joint/JJ foreign/JJ wrong/JJ worst/JJS difficult/JJ old/JJ
tired/JJ missing/JJ late/JJ safety/NN credit/NN ready/JJ compatible/JJ
several/JJ only/RB
next/JJ last/JJ two/CD one/CD twice/RB sharply/RB online/RB least/JJS once/RB
about/IN within/IN again/RB there/EX here/RB back/RB never/RB when/WRB
dear/JJ hi/UH hello/UH thanks/NNS please/VB up/RP
million/CD delays/NNS operations/NNS working/VBG down/RP worried/VBN tickets/NNS
out/RP police/NNS connection/NN companies/NNS ahead/RB chief/JJ executive/NN
shares/NNS ship/VB paid/VBD orders/NNS doubled/VBD during/IN
best/JJS seller/NN full/JJ price/NN deliver/VB before/IN weekend/NN according/VBG flights/NNS most/JJS now/RB rescue/NN
"""
POS = {}
for item in POS_LEX.split():
    w, t = item.rsplit("/", 1)
    POS[w] = t

PUNCT_POS = {",": ",", ".": ".", "?": ".", "!": ".", "(": "(", ")": ")",
             ":": ":", "-": ":", "'s": "POS", "$": "$"}

UNKNOWN_WORDS = Counter()


def pos_for(token, etype, slot, idx_in_sent):
    if token in PUNCT_POS:
        return PUNCT_POS[token]
    if re.fullmatch(r"[\d.,:]+", token):
        return "CD"
    if etype:
        low = token.lower()
        if low in ("of", "de", "du"):
            return "IN"
        if low == "the":
            return "DT"
        if low in ("van", "der"):
            return "NNP"
        if slot == "NAT":
            return "JJ"
        if slot == "NATPL":
            return "NNPS"
        if re.fullmatch(r"\d+", token):
            return "CD"
        if token.endswith("s") and slot in ("EVT",) and token in ("Games", "Olympics"):
            return "NNPS"
        return "NNP"
    low = token.lower()
    if low in POS:
        return POS[low]
    if token in DAYS_NER or token in MONTHS_NER:
        return "NNP"
    UNKNOWN_WORDS[token] += 1
    if token[0].isupper() and idx_in_sent > 0:
        return "NNP"
    if low.endswith("ing"):
        return "VBG"
    if low.endswith("ed"):
        return "VBD"
    if low.endswith("ly"):
        return "RB"
    if low.endswith("s") and not low.endswith("ss"):
        return "NNS"
    return "NN"


NP_TAGS = {"DT", "PDT", "PRP$", "PRP", "JJ", "JJR", "JJS", "NN", "NNS", "NNP",
           "NNPS", "CD", "POS", "$", "EX", "WP"}
NP_STARTERS = {"DT", "PRP$", "PRP", "POS", "EX", "WP"}


def chunk_tags(pos_tags):
    chunks = []
    prev = None
    for i, p in enumerate(pos_tags):
        nxt = pos_tags[i + 1] if i + 1 < len(pos_tags) else None
        if p in NP_TAGS:
            typ = "NP"
        elif p.startswith("VB") or p == "MD" or (p == "TO" and nxt and nxt.startswith("VB")):
            typ = "VP"
        elif p in ("RB",) and prev == "VP" and nxt and (nxt.startswith("VB")):
            typ = "VP"
        elif p in ("IN", "TO"):
            typ = "PP"
        elif p in ("RB", "WRB"):
            typ = "ADVP"
        elif p == "RP":
            typ = "PRT"
        elif p == "UH":
            typ = "INTJ"
        elif p == "WDT":
            typ = "NP"
        else:
            typ = None
        if typ is None:
            chunks.append("O")
        elif typ == prev and typ in ("NP", "VP") and not (typ == "NP" and p in NP_STARTERS and pos_tags[i - 1] != "PDT"):
            chunks.append("I-" + typ)
        else:
            chunks.append("B-" + typ)
        prev = typ
    return chunks


def ner_slot_value(rng, slot, unseen_prob):
    def pick(pool):
        seen, unseen = pool
        if unseen_prob > 0 and rng.random() < unseen_prob:
            return rng.choice(unseen)
        return rng.choice(seen)
    if slot == "PER":
        r = rng.random()
        if r < 0.1:
            return pick(MULTI_PER)
        if r < 0.22:
            return pick(LAST)
        return pick(FIRST) + " " + pick(LAST)
    if slot == "ORG":
        return pick(COMPANY)
    if slot == "CLUB":
        return pick(CLUB)
    if slot in ("SHOP", "MEDIA", "CITY", "COUNTRY", "SPORT", "FAIR", "SALE", "MAKER", "BANK", "TEL", "AIR", "COURIER"):
        return pick({"SHOP": SHOP, "MEDIA": MEDIA, "CITY": CITY, "COUNTRY": COUNTRY,
                     "SPORT": SPORT, "FAIR": FAIR, "SALE": SALE, "MAKER": MAKER, "BANK": BANK, "TEL": TEL, "AIR": AIR,
                     "COURIER": COURIER}[slot])
    if slot == "INST":
        return pick(INST)
    if slot == "LOC":
        return pick(CITY if rng.random() < 0.6 else COUNTRY)
    if slot == "NAT":
        return pick(NAT)
    if slot == "NATPL":
        return pick(NATPL)
    if slot == "EVT":
        return pick(SPORT if rng.random() < 0.65 else FAIR)
    if slot == "PROD":
        return pick(PRODUCT)
    raise KeyError(slot)


def render_ner(rng, template, unseen_prob):
    """Return a list of (token, POS, CHUNK, TAG)."""
    tokens = []  # (token, ner_tag, slot)
    used = set()
    for piece in template.split(" "):
        m = re.fullmatch(r"\{(\w+)\}", piece)
        if not m:
            tokens.append((piece, "O", None))
            continue
        slot = m.group(1)
        if slot == "DAY":
            tokens.append((rng.choice(DAYS_NER), "O", None))
            continue
        if slot == "MONTH":
            tokens.append((rng.choice(MONTHS_NER), "O", None))
            continue
        if slot == "PCT":
            tokens.append((rng.choice([str(rng.randrange(2, 15)), "{}.{}".format(rng.randrange(0, 12), rng.randrange(1, 10))]), "O", None))
            continue
        if slot == "NUM":
            tokens.append((rng.choice([str(rng.randrange(2, 40)), "{}.{}".format(rng.randrange(1, 12), rng.randrange(1, 10)),
                                       str(rng.randrange(100, 900))]), "O", None))
            continue
        etype = ENTITY_SLOTS[slot]
        for _ in range(20):
            value = ner_slot_value(rng, slot, unseen_prob)
            if value not in used:
                break
        used.add(value)
        for j, tok in enumerate(value.split(" ")):
            tokens.append((tok, ("B-" if j == 0 else "I-") + etype, slot))
    # sentence-initial "The" inside entity: none; capitalise first token
    pos = [pos_for(tok, tag != "O", slot, i) for i, (tok, tag, slot) in enumerate(tokens)]
    chunks = chunk_tags(pos)
    return [(tok, p, c, tag) for (tok, tag, _), p, c in zip(tokens, pos, chunks)]


def build_ner_split(rng, n, templates_seen, templates_heldout, heldout_share,
                    unseen_prob, forbid):
    sents = []
    keys = set()
    order_seen, order_held = [], []
    while len(sents) < n:
        use_held = templates_heldout and rng.random() < heldout_share
        if use_held:
            if not order_held:
                order_held = list(templates_heldout)
                rng.shuffle(order_held)
            t = order_held.pop()
        else:
            if not order_seen:
                order_seen = list(templates_seen)
                rng.shuffle(order_seen)
            t = order_seen.pop()
        s = render_ner(rng, t, unseen_prob)
        key = " ".join(x[0] for x in s)
        if key in keys or key in forbid:
            continue
        keys.add(key)
        sents.append(s)
    return sents, keys


def build_ner(rng):
    train, train_keys = build_ner_split(rng, 700, NER_TRAIN_TEMPLATES, [], 0.0, 0.0, set())
    dev, dev_keys = build_ner_split(rng, 150, NER_TRAIN_TEMPLATES, NER_HELDOUT_TEMPLATES,
                                    0.4, 0.5, train_keys)
    test, _ = build_ner_split(rng, 150, NER_TRAIN_TEMPLATES, NER_HELDOUT_TEMPLATES,
                              0.4, 0.5, train_keys | dev_keys)
    return train, dev, test
