"""The financial-news sentiment data set (sentiment.csv): sector pools, slot fillers, templates, the builder."""
import re

from .common import expand

# sector -> (companies, products or None, business segments)
SECTORS = {
    "tech": (["Corvane Systems", "Ivora Semiconductors", "Umbra Cloud",
              "Xelion Robotics", "Cobaltline Networks", "Palisade Software",
              "Tamsin Electronics", "Emberlake Gaming"],
             ["chip", "laptop", "router", "smartphone", "drone", "server",
              "gaming console", "smart speaker"],
             ["cloud", "data-center", "consumer", "advertising", "subscription",
              "enterprise software"]),
    "health": (["Delmont Pharma", "Lumora Biotech", "Yarrow Health",
                "Redfern Pharmaceuticals"],
               ["vaccine", "insulin pen", "pacemaker", "cancer drug",
                "blood-pressure monitor", "hearing aid"],
               ["medical-device", "oncology", "generics", "consumer health"]),
    "industrial": (["Obsidian Motors", "Hollis Aerospace", "Irongate Security",
                    "Westbrook Steel", "Kaltex Chemicals", "Solvane Materials"],
                   ["SUV", "e-bike", "airbag", "jet engine", "alarm system",
                    "battery pack"],
                   ["electric-vehicle", "defence", "aftermarket",
                    "specialty chemicals", "construction"]),
    "energy": (["Brightwater Energy", "Zephyr Wind Power", "Larchmont Utilities",
                "Glenmoor Mining", "Quarrystone Cement", "Greyfield Paper"],
               ["heat pump", "wind turbine", "solar panel", "smart meter"],
               ["renewables", "wholesale power", "copper", "packaging"]),
    "consumer": (["Everhart Foods", "Meridale Foods", "Bellhaven Brewing",
                  "Tessaro Apparel", "Juniper Ridge Retail", "Kinsley Retail Group"],
                 ["baby formula", "frozen meal", "craft lager", "running shoe",
                  "snack bar", "pet food"],
                 ["online", "premium", "wholesale", "own-brand", "grocery"]),
    "finance": (["Altavera Holdings", "Fintrel Bank", "Quantrel Insurance",
                 "Ashgrove Capital", "Northwind Bank", "Oakbridge Financial",
                 "Marlow & Finch"],
                None,
                ["mortgage", "wealth-management", "investment-banking",
                 "credit-card", "life insurance"]),
    "services": (["Halcyon Airways", "Nordal Shipping", "Vantora Logistics",
                  "Silverline Rail", "Pelican Bay Resorts", "Valecrest Hotels",
                  "Rivermark Telecom", "Driftwood Media", "Foxhall Properties"],
                 None,
                 ["freight", "leisure travel", "advertising", "broadband",
                  "commercial property", "business travel"]),
}
COMPANIES = [c for cos, _, _ in SECTORS.values() for c in cos]
SECTOR_OF = {c: k for k, (cos, _, _) in SECTORS.items() for c in cos}
PRODUCT_COMPANIES = [c for cos, prods, _ in SECTORS.values() if prods for c in cos]
REGIONS = ["Europe", "China", "Latin America", "Southeast Asia", "North America",
           "the Middle East", "India", "Africa", "the UK", "Japan"]
QUARTERS = ["first-quarter", "second-quarter", "third-quarter", "fourth-quarter",
            "Q1", "Q2", "Q3", "Q4", "half-year", "full-year"]
QUARTER_NOUN = ["first quarter", "second quarter", "third quarter",
                "fourth quarter", "first half", "fiscal year"]
AGENCIES = ["Moody's", "S&P", "Fitch", "a major ratings agency"]
EXECS = ["Helen Marsh", "Ravi Kapoor", "Daniel Okoro", "Julia Brandt",
         "Tomas Lindgren", "Mei Tan", "Carlos Ibarra", "Sophie Laurent",
         "Aaron Feld", "Nadia Haddad", "Peter Voss", "Grace Adeyemi"]
CONFS = ["Goldbridge Technology", "Northshore Healthcare", "Global Industrials",
         "Annual Energy", "Consumer & Retail", "Financials Leaders"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]
CURR = ["$", "EUR ", "GBP ", "$", "$"]


def make_fin_slot():
    """Slot filler with per-sentence state: products and segments follow the
    sector of the first company mentioned."""
    state = {"sector": None}

    def slot(rng, name):
        if name in ("co", "pco", "hco"):
            pool = {"co": COMPANIES, "pco": PRODUCT_COMPANIES,
                    "hco": SECTORS["health"][0]}[name]
            c = rng.choice(pool)
            state["sector"] = SECTOR_OF[c]
            return c
        if name in ("co2", "customer"):
            return rng.choice(COMPANIES)
        if name == "prod":
            return rng.choice(SECTORS[state["sector"]][1])
        if name == "cur":
            if "cur" not in state:
                state["cur"] = rng.choice(CURR)
            return state["cur"]
        if name == "segment":
            sec = state["sector"] or rng.choice(sorted(SECTORS))
            return rng.choice(SECTORS[sec][2])
        return fin_slot(rng, name)
    return slot


def fin_slot(rng, name):
    if name == "pct":
        return rng.choice([str(rng.randrange(2, 25)), "{}.{}".format(rng.randrange(1, 19), rng.randrange(1, 10))])
    if name == "smallpct":
        return "{}.{}".format(rng.randrange(0, 2), rng.randrange(1, 10))
    if name == "amt":
        return str(rng.choice([rng.randrange(12, 950), rng.randrange(1, 9)]))
    if name == "bn":
        return "{}.{}".format(rng.randrange(1, 12), rng.randrange(1, 10))
    if name == "cur":
        return rng.choice(CURR)
    if name == "n":
        return "{:,}".format(rng.choice([rng.randrange(2, 40) * 100, rng.randrange(1, 15) * 1000]))
    if name == "big":
        return str(rng.randrange(60, 950))
    if name == "small":
        return "{}.{}".format(rng.randrange(5, 55), rng.randrange(0, 10))
    if name == "mil":
        return str(rng.randrange(2, 60))
    if name == "region":
        return rng.choice(REGIONS)
    if name == "q":
        return rng.choice(QUARTERS)
    if name == "qn":
        return rng.choice(QUARTER_NOUN)
    if name == "agency":
        return rng.choice(AGENCIES)
    if name == "exec":
        return rng.choice(EXECS)
    if name == "conf":
        return rng.choice(CONFS)
    if name == "date":
        return "{} {}".format(rng.choice(MONTHS), rng.randrange(1, 29))
    if name == "month":
        return rng.choice(MONTHS)
    if name == "year":
        return str(rng.randrange(2027, 2036))
    if name == "city":
        return rng.choice(["Frankfurt", "Singapore", "Austin", "Dublin", "Toronto",
                           "Zurich", "Charlotte", "Amsterdam", "Dubai", "Denver"])
    raise KeyError(name)


SENTIMENT_TEMPLATES = {
    "positive": [
        "Shares of {co} [jumped|surged|soared|climbed] {pct}% after quarterly profit beat estimates",
        "{co} raises full-year revenue guidance on strong {segment} demand",
        "{co} posts record {q} sales; stock climbs {pct}%",
        "Analysts upgrade {co} to 'buy', citing improving margins",
        "{co} wins {cur}{amt} million contract from {customer}",
        "{co} boosts quarterly dividend by {pct}%",
        "{pco} shares hit all-time high as {prod} orders surge",
        "{co} swings to {q} profit, well ahead of forecasts",
        "{co} net income rises {pct}% on cost cuts and higher volumes",
        "Regulators approve {hco}'s new {prod}, sending shares higher",
        "{co} announces {cur}{bn} billion share buyback programme",
        "{co} reports strongest customer growth in five years",
        "{agency} upgrades {co} to investment grade",
        "Investors cheer {co}'s expansion into {region}",
        "{co}'s order backlog reaches a record {cur}{bn} billion",
        "{co} stock rallies after winning patent case against {co2}",
        "{co} beats expectations as online sales double",
        "Operating profit at {co} rose to {cur}{big} million from {cur}{small} million a year earlier",
        "{co} lifts margin target after a strong {qn}",
        "{co} sales jump {pct}% in {month}, best month on record",
        "{co} secures long-term supply deal with {customer}, shares up {pct}%",
        "{co} cuts net debt sharply and restores its dividend",
        "Strong demand in {region} drives {co} revenue to new high",
        "{co} shares gain after the company reported a surge in {segment} bookings",
        "The company said {qn} earnings per share more than doubled, beating consensus",
        "{co} completes turnaround, reporting its first annual profit since 2019",
        "Brokers lift price targets on {co} after upbeat investor day",
        "{co} jumps {pct}% as takeover bid from {co2} values it at a premium",
    ],
    "negative": [
        "Shares of {co} [plunged|tumbled|sank|slumped] {pct}% after the company missed earnings estimates",
        "{co} cuts full-year outlook, citing weak demand in {region}",
        "{co} to lay off {n} workers as sales slump",
        "{pco} recalls {n} {prod}s over safety concerns",
        "Regulators open probe into {co}'s accounting practices",
        "{co} downgraded to 'sell' on margin worries",
        "{co} files for bankruptcy protection after debt talks collapse",
        "{co} suspends dividend after a {q} loss",
        "{co} shares slide as chief executive resigns abruptly",
        "{co} posts wider-than-expected {q} loss",
        "{co} hit with {cur}{amt} million fine over misleading customers",
        "Data breach at {co} exposes details of {mil} million customers",
        "{pco} warns of component shortages; stock tumbles {pct}%",
        "{co} loses key contract with {customer}",
        "{agency} cuts {co} to junk status",
        "{co} revenue falls {pct}% as {segment} business weakens",
        "Operating profit at {co} fell to {cur}{small} million from {cur}{big} million",
        "{co} shares drop after auditor raises going-concern doubts",
        "{pco} halts production at {city} plant after fire",
        "{co} issues profit warning, blaming higher energy costs",
        "Investors flee {co} as short seller alleges inflated sales",
        "{hco} sinks to five-year low after {prod} trial fails",
        "{co} writes down {cur}{bn} billion on its troubled {segment} unit",
        "{co} misses revenue forecasts for a third straight quarter",
        "Strike at {co} disrupts deliveries, hurting {qn} sales",
        "{pco} faces class action lawsuit over faulty {prod}s",
        "{co} scraps merger with {co2}, shares fall {pct}%",
        "The company said {qn} net sales decreased {pct}% and warned of further declines",
    ],
    "neutral": [
        "{co} to report {q} results on {date}",
        "{co} appoints {exec} as chief financial officer",
        "{co} shares little changed ahead of central bank decision",
        "{co} completes previously announced acquisition of {co2}",
        "{co} to hold annual general meeting on {date}",
        "{co} will present at the {conf} conference next week",
        "{co} files quarterly report with securities regulator",
        "{co} sets date for {year} investor day",
        "{co} reaffirms full-year guidance",
        "{co} {q} results in line with analyst expectations",
        "{co} names {exec} to its board of directors",
        "{co} moves headquarters to {city}",
        "{co} shares trade flat in early session",
        "{co} prices {cur}{amt} million of senior notes due {year}",
        "Analysts keep 'hold' rating on {co}",
        "{co} confirms talks with {co2}, says no decision has been made",
        "{pco} launches new {prod} in {region}",
        "{co} to change its ticker symbol from {date}",
        "{co} says {exec} will succeed retiring chairman in {month}",
        "{co} publishes annual sustainability report",
        "The company's net sales were {cur}{amt} million, roughly unchanged from a year earlier",
        "{co} shares moved {smallpct}% in thin holiday trading",
        "{co} and {co2} sign memorandum of understanding on {segment} research",
        "{co} will release {qn} figures before the market opens on {date}",
        "{co} opens new office in {city}",
        "{co} board to consider interim dividend at {month} meeting",
        "{co} lists bonds on the {city} exchange",
        "{co} says it is reviewing strategic options for its {segment} unit",
        "{co} updates share count after employee option exercises",
    ],
}

SENT_PER_LABEL = 150


def build_sentiment(rng):
    rows = []
    seen = set()
    for label in ("positive", "neutral", "negative"):
        templates = SENTIMENT_TEMPLATES[label]
        order = []
        got = 0
        while got < SENT_PER_LABEL:
            if not order:
                order = list(templates)
                rng.shuffle(order)
            t = expand(rng, order.pop(), make_fin_slot())
            t = t[0].upper() + t[1:]
            t = t.replace("s's ", "s' ")
            # avoid "X ... from X" self-references
            if len(set(re.findall("|".join(re.escape(c) for c in COMPANIES), t))) < len(re.findall("|".join(re.escape(c) for c in COMPANIES), t)):
                continue
            if rng.random() < 0.15 and not t.endswith("."):
                t += "."
            if t.lower() in seen:
                continue
            seen.add(t.lower())
            rows.append((t, label))
            got += 1
    rng.shuffle(rows)
    return rows
