"""Varied, realistic marketplace leads for the benchmarks (deterministic for a given seed).

Every lead is distinct (name, email, company, phone), phone numbers belong to the lead's country
(built from ``phonenumbers.example_number`` with the last digits varied) and are written the ways
people write them: E.164, international, national, country code without the plus, a bare number.
The mix also has both ``LeadSource`` shapes, both key casings, campaign JSON, ``Campaigns:`` lists
and free-text descriptions, a few ``MSFT_TEST_`` leads, ``.edu`` leads with the personal data
withheld, non-ASCII and invalid emails, and countries the app does not know.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
import pycountry

# (region, weight, TLD for company domains, how people write the country besides its codes/name)
REGIONS = [
    ("US", 30, "com", ["USA", "United States", "United States of America", "U.S."]),
    ("GB", 8, "co.uk", ["UK", "United Kingdom", "Great Britain", "England"]),
    ("DE", 7, "de", ["Germany", "Deutschland"]),
    ("IN", 7, "in", ["India"]),
    ("FR", 5, "fr", ["France"]),
    ("CA", 4, "ca", ["Canada"]),
    ("AU", 4, "com.au", ["Australia"]),
    ("JP", 4, "co.jp", ["Japan"]),
    ("BR", 3, "com.br", ["Brazil", "Brasil"]),
    ("NL", 3, "nl", ["Netherlands", "The Netherlands"]),
    ("ES", 2, "es", ["Spain", "España"]),
    ("IT", 2, "it", ["Italy"]),
    ("SE", 2, "se", ["Sweden"]),
    ("SG", 2, "sg", ["Singapore"]),
    ("MX", 2, "mx", ["Mexico"]),
    ("ZA", 1, "co.za", ["South Africa"]),
    ("KR", 1, "co.kr", ["South Korea", "Korea"]),
    ("PL", 1, "pl", ["Poland"]),
    ("CH", 1, "ch", ["Switzerland"]),
    ("IE", 1, "ie", ["Ireland"]),
    ("NZ", 1, "co.nz", ["New Zealand"]),
    ("AE", 1, "ae", ["United Arab Emirates", "UAE"]),
    ("IL", 1, "co.il", ["Israel"]),
    ("TR", 1, "com.tr", ["Turkey", "Türkiye"]),
]

FIRST = """James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard
Susan Joseph Jessica Thomas Sarah Charles Karen Priya Rahul Ananya Arjun Sanjay Deepika Hiroshi Yuki
Haruto Sakura Min-jun Seo-yeon Wei Li Fang Jun Mohammed Fatima Omar Aisha Lukas Hannah Felix Lea
Jonas Emma Mathis Chloé Louis Léa Sofía Mateo Valentina Santiago Lucía João Ana Pedro Beatriz Liam
Olivia Noah Ava Oliver Isla Aroha Tane Siobhán Seán Niamh Zofia Jakub Ingrid Erik Astrid Lars Daan
Sanne Thabo Naledi Ji-ho Yael Noa Emre Zeynep Chinedu Ngozi Kwame Ama""".split()
LAST = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Patel Sharma Gupta Iyer Reddy Nair Sato
Suzuki Takahashi Tanaka Kim Lee Park Choi Wang Zhang Liu Chen Khan Ahmed Hassan Müller Schmidt
Schneider Fischer Weber Meyer Dubois Lefebvre Moreau Laurent Silva Santos Oliveira Costa Pereira
Fernández González Rossi Russo Ferrari Esposito O'Brien Murphy Kelly Nowak Kowalski Wiśniewski
Andersson Johansson Nilsson de Vries van Dijk Bakker Jansen Nkosi Dlamini Cohen Levi Yılmaz Kaya
Okafor Mensah Ngata Walker Hall Young King Wright Scott Green Baker Adams Nelson Hill Campbell""".split()
ASCII_FOLD = str.maketrans("éèëáíóúñüöçãâıśńłø", "eeeaiounuocaaisnlo")

COMPANY_HEADS = """Contoso Fabrikam Northwind Tailspin Wingtip Litware Proseware Woodgrove Coho Lamna
Relecloud VanArsdel Humongous Lucerne Southridge Trey Alpine Fourth Datum Adatum Blue Yonder Margie's
Wide World Consolidated Graphic Bellows Boreal Cascade Keystone Meridian Summit Harbor Granite Juniper
Redwood Sterling Vertex Quantum Aurora Nimbus Polaris Zenith Orion Atlas Beacon Pinnacle""".split()
COMPANY_SECTORS = """Analytics Logistics Health Labs Systems Capital Energy Foods Retail Software Robotics
Insurance Pharma Media Travel Telecom Consulting Manufacturing Bank Cloud Security Data""".split()
COMPANY_SUFFIX = {
    "US": ["Inc.", "LLC", "Corp.", "Inc"],
    "GB": ["Ltd", "Ltd.", "plc", "LLP"],
    "DE": ["GmbH", "AG", "GmbH & Co. KG"],
    "FR": ["SA", "SAS", "SARL"],
    "JP": ["KK", "Co., Ltd."],
    "AU": ["Pty Ltd"],
    "NL": ["B.V.", "BV"],
    "SE": ["AB"],
    "BR": ["Ltda.", "S.A."],
    "ES": ["S.L.", "S.A."],
    "IT": ["S.p.A.", "S.r.l."],
    "IN": ["Pvt Ltd", "Private Limited", "Ltd"],
    "CH": ["AG", "SA"],
    "PL": ["Sp. z o.o."],
}
TITLES = """CTO|CIO|IT Director|Head of IT|Cloud Architect|Solutions Architect|DevOps Engineer|Software Engineer
|Data Scientist|VP Engineering|IT Manager|Procurement Manager|CEO|Founder|Operations Manager|Security Lead
|Platform Engineer|Sales Director|Product Manager|Systems Administrator|Consultant|Analyst""".replace("\n", "").split(
    "|"
)
# One publisher's offers, as Partner Center names them (publisher.offer): the leads of a publisher come
# from its dozen offers, not from hundreds (the silence watch writes once per offer and day).
PUBLISHER = "contoso"
OFFERS = [
    "crm",
    "analytics-suite",
    "backup-vm",
    "saas-connector",
    "secure-gateway",
    "ai-assistant",
    "data-platform",
    "openedx",
    "r77-10sg-byol",
    "sign-for-teams",
    "iot-hub-kit",
]
# (LeadSource, ActionCode) when written alone, and the folded prefixes (Source-Action).
ALONE = [
    ("AzureMarketplace", "INS"),
    ("AzurePortal", "Create"),
    ("SPZA", "PLT"),
    ("AppSource", "PLT"),
    ("TestDrive", "StartTestDrive"),
    ("AzureMarketplace", "DNC"),
    ("azuremarketplace", "ins"),
]
FOLDED = [
    "AzureMarketplace-INS",
    "SPZA-PLT",
    "SPZA-DNC",
    "AzurePortal-Create",
    "TestDrive-StartTestDrive",
    "SPZA-INS",
    "AzureMarketplace-PLT",
]
FREE_TEXT = [
    "Interested in a proof of concept for our {sector} team.",
    "Please call me back about pricing for {n} seats.",
    "We are evaluating vendors this quarter.\n\nBudget approved; timeline Q{q}.",
    "Looking for an Azure-native option to replace our on-prem {sector} stack.",
    "   Can you   share a  reference customer in {country}?   ",
    "Trial started from the marketplace listing.",
    "Need SSO + SCIM. Migration of ~{n}k records.",
]
UNIVERSITIES = [
    "University of {city}",
    "{city} State University",
    "{city} Institute of Technology",
    "{city} Community College",
]
CITIES = ["Springfield", "Riverside", "Fairview", "Georgetown", "Oxford", "Kingston", "Lakewood", "Ashland"]

_WEIGHTED = [region for region, weight, _, _ in REGIONS for _ in range(weight)]
_INFO = {region: (tld, spellings) for region, _, tld, spellings in REGIONS}


def _country_names(region: str) -> list[str]:
    country = pycountry.countries.get(alpha_2=region)
    return [region, country.alpha_3, country.name, region.lower()]


_COUNTRIES = {region: _country_names(region) for region in _INFO}
_EXAMPLES = {}
for _region in _INFO:
    _EXAMPLES[_region] = [
        number
        for number in (
            phonenumbers.example_number_for_type(_region, phonenumbers.PhoneNumberType.FIXED_LINE),
            phonenumbers.example_number_for_type(_region, phonenumbers.PhoneNumberType.MOBILE),
        )
        if number is not None
    ]


def _phone(rng: random.Random, region: str, index: int) -> Any:
    """A number of ``region`` (its example number, last four digits varied), as someone wrote it."""
    example = rng.choice(_EXAMPLES[region])
    digits = str(example.national_number)
    varied = digits[:-4] + f"{(index * 7919 + rng.randrange(10_000)) % 10_000:04d}"
    number = phonenumbers.PhoneNumber(
        country_code=example.country_code,
        national_number=int(varied),
        italian_leading_zero=example.italian_leading_zero,
    )
    roll = rng.random()
    if roll < 0.33:
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    if roll < 0.55:
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    if roll < 0.70:
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if roll < 0.85:  # country code without the plus, as in the documented "16175555555"
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
    if roll < 0.92:  # a JSON number
        return int(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:])
    if roll < 0.97:
        return (
            phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
            + f" ext. {rng.randrange(10, 999)}"
        )
    return rng.choice(["n/a", "-", "call me", "000"])


def _ascii(text: str) -> str:
    return text.lower().translate(ASCII_FOLD).replace("'", "").replace(" ", "")


def _email(rng: random.Random, first: str, last: str, domain: str, index: int) -> str:
    f, la = _ascii(first), _ascii(last)
    roll = rng.random()
    if roll < 0.015:  # internationalised (non-ASCII name or IDN domain): email-validator's full path
        name = f"{first.lower()}.{last.lower().replace(' ', '')}{index}"
        return f"{name}@{domain}" if not name.isascii() else f"{f}.{la}{index}@straße-{domain}"
    if roll < 0.025:  # not an address
        return rng.choice(
            [f"{f}.{la}{index}@", f"{f} {la}{index}@{domain}", f"{f}{index}(at){domain}", f"{f}.{la}{index}@@{domain}"]
        )
    local = rng.choice([f"{f}.{la}", f"{f[0]}{la}", f"{f}_{la}", f"{f}{la}", f"{f}.{la}+marketplace", f"{la}.{f}"])
    address = f"{local}{index}@{domain}"
    if rng.random() < 0.15:
        address = f"{local.title()}{index}@{domain.upper() if rng.random() < 0.5 else domain.title()}"
    return address


def _company(rng: random.Random, region: str) -> tuple[str, str]:
    head = rng.choice(COMPANY_HEADS)
    sector = rng.choice(COMPANY_SECTORS)
    suffix = rng.choice(COMPANY_SUFFIX.get(region, ["Ltd", "Inc.", ""]))
    name = f"{head} {sector} {suffix}".strip()
    if rng.random() < 0.05:
        name = f"  {head}  {sector}\t{suffix} "
    domain = f"{_ascii(head)}-{sector.lower()}.{_INFO[region][0] if rng.random() < 0.6 else 'com'}"
    return name, domain


def _source(rng: random.Random) -> dict[str, str]:
    offer = f"{PUBLISHER}.{PUBLISHER}-{rng.choice(OFFERS)}"
    title = " ".join(word.capitalize() for word in offer.split(".")[1].split("-"))
    if rng.random() < 0.5:
        source, action = rng.choice(ALONE)
        fields = {"LeadSource": source, "ActionCode": action}
    else:
        fields = {"LeadSource": f"{rng.choice(FOLDED)}|{offer}"}
    fields["OfferTitle" if rng.random() < 0.7 else "OfferDisplayName"] = title
    return fields


def _description(rng: random.Random, region: str, index: int) -> str | None:
    roll = rng.random()
    if roll < 0.40:
        channel = rng.choice(["blog", "webinar", "ignite", "build", "newsletter"])
        campaign = {"mktcmpid": f"{channel}-{2024 + index % 3}-q{1 + index % 4}"}
        if rng.random() < 0.6:
            campaign["partnerid"] = str(100000 + index % 90000)
        if rng.random() < 0.3:
            campaign.update(utm_source=rng.choice(["linkedin", "google", "bing"]), utm_medium="cpc")
        return json.dumps(campaign)
    if roll < 0.50:
        return "Campaigns: " + ", ".join(
            rng.sample(["spring-launch", "webinar-07", "partner-days", "trial-nurture", "ebook"], 2)
        )
    if roll < 0.85:
        return rng.choice(FREE_TEXT).format(
            sector=rng.choice(COMPANY_SECTORS).lower(),
            n=rng.randrange(5, 500),
            q=1 + index % 4,
            country=_INFO[region][1][0],
        )
    return None if roll < 0.95 else ""


def user_details(rng: random.Random, index: int) -> tuple[dict[str, Any], str, str]:
    """``(UserDetails in PascalCase, kind, region)``; kind is ``lead``, ``test`` or ``edu``."""
    region = rng.choice(_WEIGHTED)
    roll = rng.random()
    if roll < 0.01:  # the marketplace's validation lead
        marker = f"MSFT_TEST_{636573304831318844 + index}"
        return (
            {
                "FirstName": marker,
                "LastName": marker,
                "Email": f"{marker}@test.com",
                "Phone": "1234567890",
                "Country": "US",
                "Company": marker,
                "Title": marker,
            },
            "test",
            "US",
        )
    country = rng.choice(_COUNTRIES[region] + _INFO[region][1])
    if roll < 0.04:  # .edu customer: personal data withheld
        school = rng.choice(UNIVERSITIES).format(city=rng.choice(CITIES))
        details = {
            "Country": country,
            "Company": f"{school} #{index}",
            "Title": rng.choice(["", "Student", "Lecturer"]),
        }
        if rng.random() < 0.5:
            details.update(FirstName="", LastName="", Email="", Phone="")
        return details, "edu", region
    first, last = rng.choice(FIRST), rng.choice(LAST)
    if rng.random() < 0.3:
        first = f"{first} {rng.choice('ABCDEFGHJKLMNPRSTW')}."
    company, domain = _company(rng, region)
    details = {
        "FirstName": first,
        "LastName": last,
        "Email": _email(rng, first.split()[0], last, domain, index),
        "Phone": _phone(rng, region, index),
        "Country": country,
        "Company": company,
        "Title": rng.choice(TITLES),
    }
    for name in ("Title", "Phone", "Company"):  # optional fields sometimes missing
        if rng.random() < 0.04:
            del details[name]
    return details, "lead", region


def _recase(mapping: dict[str, Any], style: str) -> dict[str, Any]:
    if style == "camel":
        return {key[0].lower() + key[1:]: value for key, value in mapping.items()}
    if style == "lower":
        return {key.lower(): value for key, value in mapping.items()}
    return mapping


def http_bodies(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """JSON bodies as the marketplace POSTs them (HTTPS endpoint destination)."""
    rng = random.Random(seed)
    bodies = []
    for index in range(count):
        details, kind, region = user_details(rng, index + seed * 1_000_000)
        style = rng.choices(["pascal", "camel", "lower"], [7, 2, 1])[0]
        body = {"UserDetails": _recase(details, style), **_source(rng)}
        description = _description(rng, region, index)
        if kind == "test":
            body["Description"] = details["FirstName"]
        elif description is not None:
            body["Description"] = description
        body = _recase(body, style) if style != "pascal" else body
        bodies.append(body)
    return bodies


def table_entities(count: int, seed: int = 2, start: datetime | None = None) -> list[dict[str, Any]]:
    """Entities as the marketplace writes them to a table (CustomerInfo is a JSON string),
    100 to a partition so they can be written in batches."""
    rng = random.Random(seed)
    start = start or datetime(2026, 11, 1, tzinfo=UTC)
    entities = []
    for index in range(count):
        details, kind, region = user_details(rng, index + seed * 1_000_000)
        created = start + timedelta(seconds=index * 7)
        entity = {
            "PartitionKey": f"{(start + timedelta(days=index // 100)):%Y-%m-%d}-{index // 100:04d}",
            "RowKey": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "CustomerInfo": json.dumps(details, ensure_ascii=False),
            "CreatedTime": created.isoformat().replace("+00:00", "Z"),
            **_source(rng),
        }
        description = details["FirstName"] if kind == "test" else _description(rng, region, index)
        if description is not None:
            entity["Description"] = description
        entities.append(entity)
    return entities


def batches(entities: list[dict[str, Any]], size: int = 100) -> Iterator[list[dict[str, Any]]]:
    """Runs of at most ``size`` entities sharing a PartitionKey (a table transaction's limit)."""
    run: list[dict[str, Any]] = []
    for entity in entities:
        if run and (len(run) == size or run[0]["PartitionKey"] != entity["PartitionKey"]):
            yield run
            run = []
        run.append(entity)
    if run:
        yield run
