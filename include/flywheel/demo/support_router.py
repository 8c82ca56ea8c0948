"""Demo workload (a): the customer-support tool router of an online shop, as its teacher answers it.

Customers of "Larkspur Goods" write in about orders, deliveries, returns, products and address
changes, ask for a human, or just chat. The teacher routes each message to one of seven tools with
arguments taken from the conversation (the order id, SKU or tracking number the customer typed), or
answers in plain text when no tool applies. Queries come from many phrasings per intent, with
greetings, sign-offs, lower-case typing and the odd typo; some conversations carry an earlier
exchange (small talk, or an order look-up whose result the customer follows up on).

The shop's backend API comes in two versions (:class:`RouterApi`). :data:`API_V1` is the tool set
the demo starts with; :data:`API_V2` is the same backend after a release, changed the way production
APIs change: ``track_shipment`` is renamed ``track_package``, ``start_return`` requires a new
``refund_method``, and a new intent (cancelling an order) comes with a new tool, ``cancel_order``.
Customers' wording shifts with it (the new app says "parcel" and "delivery"). The demo seeding
switches to it on a chosen day (``flywheel demo seed --drift-day``), so the flywheel has an API
change to notice and recover from.

:func:`make_conversation` is the workload's entry point for :func:`flywheel.demo.traffic.generate_traffic`.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from flywheel.demo.conversation import (
    Conversation,
    arguments_json,
    estimate_tokens,
    function_tool,
    new_call_id,
)
from flywheel.demo.personal_data import (
    PlantedPii,
    append_sentence,
    fake_value,
    plant_in_user_message,
    with_user_sentence,
)
from flywheel.validate.pii import PiiKind

SYSTEM_PROMPT = (
    "You are the customer-support assistant of Larkspur Goods, an online shop for electronics, home, "
    "kitchen, outdoor gear, clothing, toys, beauty and books. Use the tools to look up orders, track "
    "shipments, start returns, search the catalog, show product details, change a shipping address or "
    "hand the customer over to a human agent. Call one tool when the request needs it, with arguments "
    "taken from the conversation; never invent order numbers, SKUs or tracking numbers. Answer "
    "greetings, thanks and policy questions in one or two friendly sentences without a tool, and "
    "politely decline requests that have nothing to do with shopping with us.\n"
    "Policies: returns within 30 days of delivery, free return shipping for damaged or wrong items; "
    "free standard shipping on orders over $50; we ship to the US, Canada, the UK and Germany; human "
    "support is available 8am-8pm ET, Monday to Saturday."
)

RETURN_REASONS = ("damaged", "wrong_item", "doesnt_fit", "not_as_described", "changed_mind", "arrived_late")
CATEGORIES = ("electronics", "home", "kitchen", "outdoor", "clothing", "toys", "beauty", "books")
CARRIERS = ("ups", "fedex", "usps", "dhl")
COUNTRIES = ("US", "CA", "GB", "DE")
URGENCIES = ("low", "normal", "high")

_ORDER_ID = {
    "type": "string",
    "description": "Order number: one capital letter, a dash and five digits, e.g. 'A-48213'.",
    "pattern": "^[A-Z]-[0-9]{5}$",
}
_SKU = {
    "type": "string",
    "description": "Product SKU: two letters, four digits, a three-letter variant code ('EL-4821-BLK').",
    "pattern": "^[A-Z]{2}-[0-9]{4}-[A-Z]{3}$",
}

TOOLS: list[dict[str, Any]] = [
    function_tool(
        "get_order_status",
        "Look up an order: placed, packed, shipped, delivered or cancelled, with carrier, tracking number "
        "and estimated delivery once it has shipped.",
        {
            "type": "object",
            "properties": {
                "order_id": _ORDER_ID,
                "include_items": {
                    "type": "boolean",
                    "description": "Also list the items in the order.",
                    "default": False,
                },
            },
            "required": ["order_id"],
        },
    ),
    function_tool(
        "track_shipment",
        "Latest carrier scans of a package, by tracking number.",
        {
            "type": "object",
            "properties": {
                "tracking_number": {
                    "type": "string",
                    "description": "Tracking number as the customer gave it.",
                },
                "carrier": {
                    "type": "string",
                    "enum": list(CARRIERS),
                    "description": "The carrier, only when the customer names it.",
                },
            },
            "required": ["tracking_number"],
        },
    ),
    function_tool(
        "start_return",
        "Open a return for a delivered order (or some of its items) and email a prepaid return label.",
        {
            "type": "object",
            "properties": {
                "order_id": _ORDER_ID,
                "reason": {
                    "type": "string",
                    "enum": list(RETURN_REASONS),
                    "description": "Why it goes back.",
                },
                "item_skus": {
                    "type": "array",
                    "items": _SKU,
                    "minItems": 1,
                    "description": "Only these items of the order; omit to return the whole order.",
                },
            },
            "required": ["order_id", "reason"],
        },
    ),
    function_tool(
        "search_products",
        "Search the catalog by keywords, optionally within one category and under a price.",
        {
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "description": "What the customer is looking for, in their words.",
                },
                "category": {"type": "string", "enum": list(CATEGORIES)},
                "max_price": {"type": "number", "minimum": 0, "description": "Highest price in USD."},
            },
            "required": ["query"],
        },
    ),
    function_tool(
        "get_product_details",
        "Everything about one product: description, dimensions, materials, care, stock and price.",
        {"type": "object", "properties": {"sku": _SKU}, "required": ["sku"]},
    ),
    function_tool(
        "update_shipping_address",
        "Change the delivery address of an order that has not shipped yet.",
        {
            "type": "object",
            "properties": {
                "order_id": _ORDER_ID,
                "address": {
                    "type": "object",
                    "properties": {
                        "street": {"type": "string", "description": "House number, street, apartment."},
                        "city": {"type": "string"},
                        "state": {
                            "type": "string",
                            "description": "State or province code, where one exists.",
                        },
                        "postal_code": {"type": "string"},
                        "country": {
                            "type": "string",
                            "enum": list(COUNTRIES),
                            "description": "ISO 3166-1 code.",
                        },
                        "phone": {
                            "type": "string",
                            "description": "A number the courier can call, when the customer gives one.",
                        },
                    },
                    "required": ["street", "city", "postal_code", "country"],
                },
            },
            "required": ["order_id", "address"],
        },
    ),
    function_tool(
        "talk_to_human",
        "Hand the conversation over to a human support agent, with a one-line summary of the problem.",
        {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "Short summary of what the customer needs."},
                "urgency": {"type": "string", "enum": list(URGENCIES)},
            },
            "required": ["reason", "urgency"],
        },
    ),
]
"""The router's tool definitions (OpenAI form) in :data:`API_V1`, shared read-only by every generated
document."""

SYSTEM_PROMPT_V2 = SYSTEM_PROMPT.replace(
    "change a shipping address or hand",
    "change a shipping address, cancel an order that has not shipped yet or hand",
).replace(
    "free return shipping for damaged or wrong items;",
    "free return shipping for damaged or wrong items; refunds go to the original payment method "
    "unless the customer asks for store credit;",
)
"""The system prompt of :data:`API_V2`: it also cancels orders, and says how refunds are paid."""

REFUND_METHODS = ("original_payment", "store_credit")
CANCEL_REASONS = ("ordered_by_mistake", "found_cheaper", "changed_mind", "delivery_too_slow")


def _changed_tools() -> list[dict[str, Any]]:
    """:data:`TOOLS` after the backend release: one tool renamed, a required parameter added, a tool added."""
    tools = copy.deepcopy(TOOLS)
    functions = {tool["function"]["name"]: tool["function"] for tool in tools}
    functions["track_shipment"]["name"] = "track_package"
    returns = functions["start_return"]["parameters"]
    returns["properties"]["refund_method"] = {
        "type": "string",
        "enum": list(REFUND_METHODS),
        "description": "How the refund is paid: the original payment method unless the customer asks "
        "for store credit.",
    }
    returns["required"].append("refund_method")
    tools.append(
        function_tool(
            "cancel_order",
            "Cancel an order that has not shipped yet; the payment is released within 3 business days.",
            {
                "type": "object",
                "properties": {
                    "order_id": _ORDER_ID,
                    "reason": {
                        "type": "string",
                        "enum": list(CANCEL_REASONS),
                        "description": "Why, only when the customer says.",
                    },
                },
                "required": ["order_id"],
            },
        )
    )
    return tools


TOOLS_V2 = _changed_tools()
"""The tool definitions of :data:`API_V2`."""

# --------------------------------------------------------------------------------------------------
# Catalog and identifiers

# (sku, name as customers write it, category)
_PRODUCTS = (
    ("EL-4821-BLK", "Aurora noise-cancelling headphones", "electronics"),
    ("EL-3307-WHT", "Pulse wireless earbuds", "electronics"),
    ("EL-5120-GRY", "Volt 65W USB-C charger", "electronics"),
    ("EL-7714-BLK", "Keystone mechanical keyboard", "electronics"),
    ("EL-2290-BLU", "Tidal bluetooth speaker", "electronics"),
    ("HM-2041-OAK", "Fjord oak desk lamp", "home"),
    ("HM-6612-SND", "linen duvet cover (queen)", "home"),
    ("HM-1185-GRN", "Sage blackout curtains", "home"),
    ("HM-9034-WHT", "memory foam pillow", "home"),
    ("KT-3310-BLK", "12in cast iron skillet", "kitchen"),
    ("KT-4478-SLV", "Crema espresso machine", "kitchen"),
    ("KT-1902-STL", "8in chef's knife", "kitchen"),
    ("KT-5521-RED", "Dutch oven 5.5qt", "kitchen"),
    ("OD-7730-GRN", "Trailblazer 2-person tent", "outdoor"),
    ("OD-2215-ORG", "Summit 40L hiking backpack", "outdoor"),
    ("OD-8841-BLK", "Ember camping stove", "outdoor"),
    ("CL-6120-NVY", "Drift rain jacket", "clothing"),
    ("CL-3345-GRY", "merino wool socks 3-pack", "clothing"),
    ("CL-9902-WHT", "Stride running shoes", "clothing"),
    ("TY-4410-MLT", "Harbor wooden train set", "toys"),
    ("TY-1337-MLT", "1000-piece puzzle 'Night Market'", "toys"),
    ("BT-2260-CLR", "vitamin C serum", "beauty"),
    ("BT-5108-PNK", "Breeze ionic hair dryer", "beauty"),
    ("BK-0917-PBK", "'The Long Orbit' paperback", "books"),
)
_SKU_VARIANTS = ("BLK", "WHT", "GRY", "NVY", "RED", "GRN", "BLU", "OAK")
_SKU_PREFIXES = ("EL", "HM", "KT", "OD", "CL", "TY", "BT", "BK")

# (query as typed, category)
_SEARCHES = (
    ("wireless earbuds", "electronics"),
    ("noise cancelling headphones", "electronics"),
    ("usb-c charger", "electronics"),
    ("4k monitor", "electronics"),
    ("bluetooth speaker", "electronics"),
    ("mechanical keyboard", "electronics"),
    ("phone case for pixel 9", "electronics"),
    ("blackout curtains", "home"),
    ("desk lamp", "home"),
    ("queen duvet cover", "home"),
    ("bath towels", "home"),
    ("cast iron skillet", "kitchen"),
    ("espresso machine", "kitchen"),
    ("air fryer", "kitchen"),
    ("chef's knife", "kitchen"),
    ("2 person tent", "outdoor"),
    ("hiking backpack", "outdoor"),
    ("camping stove", "outdoor"),
    ("sleeping bag", "outdoor"),
    ("rain jacket", "clothing"),
    ("running shoes", "clothing"),
    ("wool socks", "clothing"),
    ("winter gloves", "clothing"),
    ("wooden train set", "toys"),
    ("jigsaw puzzle", "toys"),
    ("board games for 2 players", "toys"),
    ("vitamin c serum", "beauty"),
    ("hair dryer", "beauty"),
    ("sci-fi paperback", "books"),
    ("cookbook", "books"),
)
_CATEGORY_WORDS = {
    "electronics": ("electronics", "the electronics section", "tech"),
    "home": ("home", "home goods", "the home section"),
    "kitchen": ("kitchen", "kitchenware", "the kitchen section"),
    "outdoor": ("outdoor", "outdoor gear", "camping & outdoor"),
    "clothing": ("clothing", "apparel", "clothes"),
    "toys": ("toys", "the toy section", "kids' toys"),
    "beauty": ("beauty", "beauty products", "skincare & beauty"),
    "books": ("books", "the book section", "books"),
}
_PRICES = (15, 20, 25, 30, 40, 50, 60, 75, 80, 100, 120, 150, 200, 250, 300, 500)

# (street, city, state or None, postal code, country code, ways customers write the country)
_PLACES = (
    ("Elm Street", "Portland", "OR", "97205", "US", ("USA", "US", "United States")),
    ("Congress Ave", "Austin", "TX", "78701", "US", ("USA", "US")),
    ("Maple Drive", "Columbus", "OH", "43215", "US", ("USA", "United States")),
    ("Lakeshore Blvd", "Chicago", "IL", "60611", "US", ("USA", "US")),
    ("Pine Road", "Denver", "CO", "80203", "US", ("United States", "USA")),
    ("King Street West", "Toronto", "ON", "M5V 2T6", "CA", ("Canada",)),
    ("Rue Sainte-Catherine", "Montreal", "QC", "H3B 1A7", "CA", ("Canada",)),
    ("Deansgate", "Manchester", None, "M3 4LZ", "GB", ("UK", "United Kingdom")),
    ("Mill Lane", "Bristol", None, "BS1 6HU", "GB", ("UK", "England")),
    ("Torstraße", "Berlin", None, "10119", "DE", ("Germany", "Deutschland")),
)

_ORDER_LETTERS = "ABCDEFGHJKLMNPRSTW"


def _order_id(rng: random.Random) -> str:
    return f"{rng.choice(_ORDER_LETTERS)}-{rng.randrange(10_000, 100_000)}"


def _sku(rng: random.Random) -> tuple[str, str | None]:
    """A SKU and, when it is a catalog item, the product's name."""
    if rng.random() < 0.7:
        sku, name, _ = rng.choice(_PRODUCTS)
        return sku, name
    return f"{rng.choice(_SKU_PREFIXES)}-{rng.randrange(1000, 10_000)}-{rng.choice(_SKU_VARIANTS)}", None


def _tracking_number(rng: random.Random, carrier: str) -> str:
    if carrier == "ups":
        shipper = rng.choice(("4F82E6", "9W47A1", "0R665X"))
        return f"1Z{shipper}{rng.choice(('03', '01', '12'))}{rng.randrange(10**7, 10**8)}"
    if carrier == "fedex":
        return str(rng.randrange(10**11, 10**12))
    if carrier == "usps":
        return f"9400{rng.randrange(10**17, 10**18)}"
    return str(rng.randrange(10**9, 10**10))


_CARRIER_WORDS = {
    "ups": ("UPS", "ups"),
    "fedex": ("FedEx", "fedex", "Fedex"),
    "usps": ("USPS", "usps", "the post office"),
    "dhl": ("DHL", "dhl"),
}

# --------------------------------------------------------------------------------------------------
# Turning templates into what customers type

_PREFIXES = ("",) * 8 + ("hi, ", "Hello! ", "hey there, ", "Good morning. ", "quick question: ", "Hi team, ")
_SUFFIXES = ("",) * 8 + (" thanks", " Thank you!", " thx", " please", " Thanks in advance.", " asap")


def _typed(rng: random.Random, template: str, slots: dict[str, Any]) -> str:
    """Fill `template` the way a customer would type it; slot values (ids, names) stay verbatim."""
    prefix, suffix = rng.choice(_PREFIXES), rng.choice(_SUFFIXES)
    if prefix.endswith((", ", ": ")) and template[:2] != "I ":
        template = template[:1].lower() + template[1:]
    text = prefix + template + suffix
    roll = rng.random()
    if roll < 0.07:
        text = _typo(rng, text)
    elif roll < 0.2:
        text = text.lower()
    return text.format(**slots)


def _typo(rng: random.Random, text: str) -> str:
    """One slip of the fingers in a word of the template text (never inside a {slot})."""
    words = text.split(" ")
    candidates = [i for i, word in enumerate(words) if len(word) >= 4 and word.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    word = words[i]
    k = rng.randrange(1, len(word) - 1)
    how = rng.randrange(3)
    if how == 0:
        word = word[:k] + word[k + 1] + word[k] + word[k + 2 :]
    elif how == 1:
        word = word[:k] + word[k + 1 :]
    else:
        word = word[:k] + word[k] + word[k:]
    words[i] = word
    return " ".join(words)


# --------------------------------------------------------------------------------------------------
# Intents: each returns (user text, tool name or None, arguments or the plain-text answer)

_Intent = tuple[str, str | None, Any]

_STATUS_TEMPLATES = (
    "Where is my order {order_id}?",
    "Can you check the status of order {order_id}",
    "order {order_id} still hasn't arrived, what's going on?",
    "Has {order_id} shipped yet?",
    "I placed order #{order_id} last week, any update?",
    "status for {order_id} pls",
    "When will my order {order_id} be delivered?",
    "Is order {order_id} on its way? It's a birthday present.",
    "what's happening with {order_id}",
    "can u check {order_id}",
    "My order number is {order_id}. Has it been dispatched?",
    "I ordered the {product} ({order_id}) and haven't heard anything since",
    "Any news on order {order_id}? The confirmation email said 3-5 days.",
    "{order_id} - where is it??",
    "I'd like an update on my order, number {order_id}.",
    "Did order {order_id} go out yet? I need it by Friday.",
)
_ITEMS_TEMPLATES = (
    "What items are in order {order_id}?",
    "can you list what's in {order_id} and whether it shipped",
    "I forgot what I ordered in {order_id}, can you show me the items and the status?",
    "Which products were in my order {order_id}?",
)


_STATUS_TEMPLATES_V2 = (
    "where's my delivery {order_id}?",
    "Delivery status for order {order_id} please",
    "Is {order_id} out for delivery yet?",
    "my parcel from order {order_id} hasn't shown up",
    "has the parcel for {order_id} left the warehouse",
    "Any delivery update on {order_id}?",
    "The app says order {order_id} is 'processing' - what does that mean?",
)
"""Order status in the wording of the shop's new app ("delivery", "parcel"), from the API change on."""


def _wording(
    rng: random.Random, api: RouterApi, usual: tuple[str, ...], new: tuple[str, ...]
) -> tuple[str, ...]:
    """The templates a query is typed from: after the API change, often in the new app's wording."""
    if api.new_wording and rng.random() < api.new_wording:
        return new
    return usual


def _order_status(rng: random.Random, api: RouterApi) -> _Intent:
    order_id = _order_id(rng)
    slots = {"order_id": order_id, "product": rng.choice(_PRODUCTS)[1]}
    if rng.random() < 0.15:
        args = {"order_id": order_id, "include_items": True}
        return _typed(rng, rng.choice(_ITEMS_TEMPLATES), slots), "get_order_status", args
    templates = _wording(rng, api, _STATUS_TEMPLATES, _STATUS_TEMPLATES_V2)
    return _typed(rng, rng.choice(templates), slots), "get_order_status", {"order_id": order_id}


_TRACK_TEMPLATES = (
    "Can you track {tracking}?",
    "tracking number {tracking} hasn't updated in 3 days",
    "where's my package? tracking # {tracking}",
    "Please look up tracking {tracking}",
    "The tracking page for {tracking} just says 'label created'. Is it moving?",
    "package {tracking} was supposed to come yesterday",
    "Track {tracking} for me",
    "Is there any movement on shipment {tracking}?",
)
_TRACK_CARRIER_TEMPLATES = (
    "My {carrier} tracking number is {tracking}, where is the package?",
    "{carrier} says {tracking} is delayed - can you check?",
    "can you track my {carrier} package {tracking}",
    "I have a {carrier} tracking number, {tracking}. It's been stuck for days.",
    "{carrier} tracking {tracking} shows 'exception', what does that mean?",
    "Could you check on {tracking}? It's shipping with {carrier}.",
)


_TRACK_TEMPLATES_V2 = (
    "track parcel {tracking}",
    "Where is parcel {tracking} right now?",
    "parcel {tracking} hasn't moved since Monday",
    "Can you find my parcel? {tracking}",
    "delivery {tracking} - is it still coming today?",
)
_TRACK_CARRIER_TEMPLATES_V2 = (
    "{carrier} parcel {tracking}: where is it?",
    "my {carrier} delivery {tracking} is late, can you check",
    "Where's the {carrier} parcel {tracking}?",
)


def _track_shipment(rng: random.Random, api: RouterApi) -> _Intent:
    carrier = rng.choice(CARRIERS)
    tracking = _tracking_number(rng, carrier)
    if rng.random() < 0.45:
        slots = {"tracking": tracking, "carrier": rng.choice(_CARRIER_WORDS[carrier])}
        templates = _wording(rng, api, _TRACK_CARRIER_TEMPLATES, _TRACK_CARRIER_TEMPLATES_V2)
        text = _typed(rng, rng.choice(templates), slots)
        return text, api.track_tool, {"tracking_number": tracking, "carrier": carrier}
    templates = _wording(rng, api, _TRACK_TEMPLATES, _TRACK_TEMPLATES_V2)
    text = _typed(rng, rng.choice(templates), {"tracking": tracking})
    return text, api.track_tool, {"tracking_number": tracking}


_REASON_PHRASES = {
    "damaged": (
        "it arrived damaged",
        "the box was crushed and the screen is cracked",
        "it came broken",
        "one of the legs snapped in transit",
    ),
    "wrong_item": (
        "you sent me the wrong item",
        "I got a blue one instead of black",
        "this isn't what I ordered",
        "the package had someone else's item in it",
    ),
    "doesnt_fit": ("it doesn't fit", "it's way too small", "the size runs large", "it's too tight"),
    "not_as_described": (
        "it doesn't look like the pictures",
        "the material feels cheap, not like the description",
        "it's not as described on the website",
    ),
    "changed_mind": ("I changed my mind", "I don't need it anymore", "I found something I like better"),
    "arrived_late": (
        "it came a week late and I needed it for a trip",
        "it arrived after the event it was for",
        "it showed up way too late",
    ),
}
_RETURN_WEIGHTS = (30, 18, 20, 12, 14, 6)
_RETURN_TEMPLATES = (
    "I want to return order {order_id}, {why}.",
    "How do I send back {order_id}? {why_cap}.",
    "{why_cap}. Order {order_id}. I'd like a refund.",
    "Return request for {order_id}: {why}",
    "i need to return my order {order_id} because {why}",
    "Can I get a return label for {order_id}? {why_cap}.",
    "{why_cap}, so I'd like to return it. It's order {order_id}.",
)
_RETURN_ITEM_TEMPLATES = (
    "I'd like to return the {product} ({sku}) from order {order_id} because {why}.",
    "Just the {sku} from {order_id} needs to go back, {why}.",
    "Order {order_id}: please start a return for item {sku}. {why_cap}.",
)


# (what the customer adds, the refund method it asks for)
_REFUND_ASKS = (
    (" Store credit is fine.", "store_credit"),
    (" I'd prefer store credit.", "store_credit"),
    (" Can I get store credit instead of a refund?", "store_credit"),
    (" Please refund it to my card.", "original_payment"),
    (" I want my money back on the original payment.", "original_payment"),
)


def _refund_method(rng: random.Random, api: RouterApi, template: str) -> tuple[str, dict[str, str]]:
    """``template`` and the refund-method argument of a return: none before the API change; after it,
    what the customer asks for, else the original payment method (the policy's default)."""
    if not api.refund_method_required:
        return template, {}
    if rng.random() < 0.4:
        ask, method = rng.choice(_REFUND_ASKS)
        return template + ask, {"refund_method": method}
    return template, {"refund_method": "original_payment"}


def _start_return(rng: random.Random, api: RouterApi) -> _Intent:
    order_id = _order_id(rng)
    reason = rng.choices(RETURN_REASONS, weights=_RETURN_WEIGHTS)[0]
    why = rng.choice(_REASON_PHRASES[reason])
    slots = {"order_id": order_id, "why": why, "why_cap": why[:1].upper() + why[1:]}
    if rng.random() < 0.25:
        sku, product, _ = rng.choice(_PRODUCTS)
        slots.update(sku=sku, product=product)
        template, refund = _refund_method(rng, api, rng.choice(_RETURN_ITEM_TEMPLATES))
        args = {"order_id": order_id, "reason": reason, "item_skus": [sku], **refund}
        return _typed(rng, template, slots), "start_return", args
    template, refund = _refund_method(rng, api, rng.choice(_RETURN_TEMPLATES))
    args = {"order_id": order_id, "reason": reason, **refund}
    return _typed(rng, template, slots), "start_return", args


_SEARCH_TEMPLATES = (
    "Do you sell {query}?",
    "looking for {query}",
    "Do you have any {query} in stock?",
    "I need {query}, what do you have?",
    "show me {query}",
    "Recommend some {query}?",
)
_SEARCH_PRICE_TEMPLATES = (
    "looking for {query} under ${price}",
    "Do you have {query} for less than {price} dollars?",
    "I need {query}, max budget ${price}",
    "cheapest {query} below ${price}?",
    "{query} under {price} bucks",
)
_SEARCH_CATEGORY_TEMPLATES = (
    "any {query} in {category}?",
    "Search {category} for {query}",
    "I'm browsing {category} - do you carry {query}?",
)
_SEARCH_BOTH_TEMPLATES = (
    "show me {query} in {category} for less than ${price}",
    "Looking in {category} for {query}, nothing over ${price} please",
)


_SEARCH_TEMPLATES_V2 = (
    "got any {query}?",
    "in the market for {query}",
    "{query} - what's available?",
    "what {query} can you deliver this week?",
)


def _search_products(rng: random.Random, api: RouterApi) -> _Intent:
    query, category = rng.choice(_SEARCHES)
    price = rng.choice(_PRICES)
    slots = {"query": query, "price": price, "category": rng.choice(_CATEGORY_WORDS[category])}
    roll = rng.random()
    if roll < 0.45:
        templates, args = _wording(rng, api, _SEARCH_TEMPLATES, _SEARCH_TEMPLATES_V2), {"query": query}
    elif roll < 0.75:
        templates, args = _SEARCH_PRICE_TEMPLATES, {"query": query, "max_price": price}
    elif roll < 0.9:
        templates, args = _SEARCH_CATEGORY_TEMPLATES, {"query": query, "category": category}
    else:
        templates, args = _SEARCH_BOTH_TEMPLATES, {"query": query, "category": category, "max_price": price}
    return _typed(rng, rng.choice(templates), slots), "search_products", args


_DETAIL_TEMPLATES = (
    "What are the dimensions of {sku}?",
    "tell me more about item {sku}",
    "Is {sku} in stock?",
    "what material is {sku} made of",
    "Can you give me the specs for SKU {sku}?",
    "How much is {sku} right now?",
)
_DETAIL_NAMED_TEMPLATES = (
    "What are the dimensions of the {product} ({sku})?",
    "Does the {product}, {sku}, come with a warranty?",
    "I'm looking at the {product} (sku {sku}) - is it back in stock?",
    "What colors does the {product} come in? The page says {sku}.",
    "How heavy is the {product}? SKU {sku}",
)


def _product_details(rng: random.Random, api: RouterApi) -> _Intent:
    sku, product = _sku(rng)
    if product is not None and rng.random() < 0.5:
        text = _typed(rng, rng.choice(_DETAIL_NAMED_TEMPLATES), {"sku": sku, "product": product})
    else:
        text = _typed(rng, rng.choice(_DETAIL_TEMPLATES), {"sku": sku})
    return text, "get_product_details", {"sku": sku}


_ADDRESS_TEMPLATES = (
    "Please ship order {order_id} to {address} instead.",
    "I moved! can you change the delivery address on {order_id} to {address}",
    "wrong address on {order_id}, it should be {address}",
    "Update shipping for {order_id}: {address}",
    "Can order {order_id} go to my office instead? {address}",
    "I need to change where {order_id} is delivered. New address: {address}",
)


def _address(rng: random.Random) -> tuple[str, dict[str, str]]:
    """An address as typed in one line, and the structured form the teacher fills in."""
    street_name, city, state, postal, country, country_words = rng.choice(_PLACES)
    street = f"{rng.randrange(2, 2400)} {street_name}"
    if rng.random() < 0.3:
        street += f" Apt {rng.randrange(1, 40)}"
    if state:
        region = f"{city}, {state} {postal}"
    else:  # German postal codes come first
        region = f"{postal} {city}" if country == "DE" else f"{city} {postal}"
    address = {"street": street, "city": city, "postal_code": postal, "country": country}
    if state:
        address["state"] = state
    return f"{street}, {region}, {rng.choice(country_words)}", address


def _update_address(rng: random.Random, api: RouterApi) -> _Intent:
    order_id = _order_id(rng)
    typed_address, address = _address(rng)
    # The address is a slot: lower-casing or typos of the template must not change it.
    text = _typed(rng, rng.choice(_ADDRESS_TEMPLATES), {"order_id": order_id, "address": typed_address})
    return text, "update_shipping_address", {"order_id": order_id, "address": address}


# (what the customer writes, the agent-facing summary, urgency)
_HANDOFFS = (
    ("I want to talk to a real person.", "customer asked for a human agent", "normal"),
    ("Get me a human please, this bot isn't helping", "customer frustrated with automated support", "normal"),
    (
        "I've been charged twice for order {order_id}!! Someone fix this NOW",
        "charged twice for order {order_id}",
        "high",
    ),
    (
        "I think someone hacked my account and placed orders, I didn't buy {order_id}",
        "possible account takeover, unrecognised order {order_id}",
        "high",
    ),
    (
        "Can someone from sales call me about a bulk order for my company (about 200 units)?",
        "bulk order inquiry, about 200 units",
        "low",
    ),
    (
        "I need to file a complaint about the delivery driver for order {order_id}",
        "complaint about delivery driver, order {order_id}",
        "normal",
    ),
    (
        "The charger from order {order_id} started smoking when I plugged it in",
        "product safety incident, order {order_id}",
        "high",
    ),
    (
        "I'd like to discuss a warranty claim with an agent",
        "warranty claim",
        "low",
    ),
)


def _talk_to_human(rng: random.Random, api: RouterApi) -> _Intent:
    template, reason, urgency = rng.choice(_HANDOFFS)
    slots = {"order_id": _order_id(rng)}
    args = {"reason": reason.format(**slots), "urgency": urgency}
    return _typed(rng, template, slots), "talk_to_human", args


# (what the customer writes, possible answers)
_SMALL_TALK = (
    (
        ("hi", "hello", "Hello there!", "hey", "Good evening"),
        (
            "Hi! I can help with orders, deliveries, returns and product questions. What can I do for you?",
            "Hello! How can I help you today?",
        ),
    ),
    (
        ("thanks!", "perfect, thank you", "that's all, cheers", "great, thanks for the help", "ok thx"),
        ("You're welcome! Have a great day.", "Happy to help! Anything else I can do for you?"),
    ),
    (
        (
            "What is your return policy?",
            "how long do i have to return something",
            "Can I still return stuff?",
        ),
        (
            "You can return most items within 30 days of delivery. Return shipping is free if the item "
            "arrived damaged or we sent the wrong one. Tell me your order number and I can start a return.",
        ),
    ),
    (
        ("Do you ship to Canada?", "do u ship internationally", "Can you deliver to Germany?"),
        ("We ship to the US, Canada, the UK and Germany. Standard shipping is free on orders over $50.",),
    ),
    (
        ("When is customer service open?", "what are your hours", "is anyone there on sundays?"),
        ("Our human agents are available 8am-8pm ET, Monday to Saturday. I'm here around the clock.",),
    ),
    (
        (
            "What's the weather going to be like tomorrow?",
            "can you help me with my math homework",
            "write a poem about socks",
            "Who won the game last night?",
            "What's the meaning of life?",
        ),
        (
            "I'm sorry, I can only help with orders, deliveries, returns and products from Larkspur Goods.",
            "That's outside what I can help with - I'm the Larkspur Goods support assistant. "
            "Is there anything about an order or a product I can do for you?",
        ),
    ),
)
_SMALL_TALK_WEIGHTS = (25, 25, 15, 10, 8, 17)


def _no_tool(rng: random.Random, api: RouterApi) -> _Intent:
    asks, answers = rng.choices(_SMALL_TALK, weights=_SMALL_TALK_WEIGHTS)[0]
    text = rng.choice(asks)
    return (text.lower() if rng.random() < 0.2 else text), None, rng.choice(answers)


_CANCEL_PHRASES = {
    "ordered_by_mistake": ("I ordered it by mistake", "I clicked buy twice", "that was an accident"),
    "found_cheaper": ("I found it cheaper somewhere else", "it's on sale at another store"),
    "changed_mind": ("I changed my mind", "I don't need it anymore"),
    "delivery_too_slow": ("it won't arrive in time", "the delivery date is way too late"),
}
_CANCEL_TEMPLATES = (
    "Please cancel order {order_id}.",
    "how do i cancel order {order_id}",
    "I need to cancel {order_id} before it ships",
    "Cancel my order {order_id} please",
)
_CANCEL_REASON_TEMPLATES = (
    "Please cancel order {order_id}, {why}.",
    "I want to cancel my order {order_id} - {why}",
    "Can I still cancel {order_id}? {why_cap}.",
    "{why_cap}, so please cancel {order_id}.",
)


def _cancel_order(rng: random.Random, api: RouterApi) -> _Intent:
    """A cancellation: an intent that exists only from the API change on (:data:`API_V2`)."""
    order_id = _order_id(rng)
    if rng.random() < 0.6:
        reason = rng.choice(CANCEL_REASONS)
        why = rng.choice(_CANCEL_PHRASES[reason])
        slots = {"order_id": order_id, "why": why, "why_cap": why[:1].upper() + why[1:]}
        text = _typed(rng, rng.choice(_CANCEL_REASON_TEMPLATES), slots)
        return text, "cancel_order", {"order_id": order_id, "reason": reason}
    text = _typed(rng, rng.choice(_CANCEL_TEMPLATES), {"order_id": order_id})
    return text, "cancel_order", {"order_id": order_id}


_IntentFn = Callable[[random.Random, "RouterApi"], _Intent]

# Order status is what customers ask most; a human handoff is rare.
_INTENTS: tuple[tuple[_IntentFn, float], ...] = (
    (_order_status, 26),
    (_track_shipment, 15),
    (_search_products, 14),
    (_start_return, 10),
    (_product_details, 9),
    (_update_address, 5),
    (_talk_to_human, 4),
    (_no_tool, 17),
)

# --------------------------------------------------------------------------------------------------
# Earlier turns of the conversation

_GREETINGS = ("hi", "hello", "hey there", "Hi, I have a question")
_GREETING_REPLIES = ("Hi! How can I help you today?", "Hello! What can I do for you?")
_FOLLOW_TRACK = (
    "can you track it for me?",
    "Where is it right now?",
    "what does the tracking say?",
    "ok, and where's the package at the moment",
)
_FOLLOW_ADDRESS = (
    "oh no, can you send it to {address} instead?",
    "Wait, I moved. Please deliver it to {address}",
)
_FOLLOW_THANKS = ("great, thanks!", "perfect, that's all", "ok thank you")
_FOLLOW_CANCEL = (
    "Actually, please cancel it.",
    "can i still cancel it then?",
    "Never mind, cancel the order",
)


def _order_lookup_turns(
    rng: random.Random, order_id: str, result: dict[str, Any], summary: str
) -> list[dict[str, Any]]:
    """An earlier order look-up: the question, the teacher's call, the tool result and its summary."""
    call_id = new_call_id(rng)
    slots = {"order_id": order_id, "product": rng.choice(_PRODUCTS)[1]}
    call = {"name": "get_order_status", "arguments": arguments_json({"order_id": order_id})}
    return [
        {"role": "user", "content": _typed(rng, rng.choice(_STATUS_TEMPLATES), slots)},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": call}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": arguments_json(result)},
        {"role": "assistant", "content": summary},
    ]


def _days(n: int) -> str:
    return f"{n} business day{'s' if n > 1 else ''}"


def _follow_up(rng: random.Random, api: RouterApi) -> tuple[list[dict[str, Any]], str, str | None, Any]:
    """Earlier turns with an order look-up, and a follow-up whose answer depends on the tool result."""
    order_id = _order_id(rng)
    roll = rng.random()
    if roll < 0.2:  # not shipped yet: the address can still change, or (API v2) the order be cancelled
        days = rng.randint(1, 3)
        result = {"order_id": order_id, "status": "packed", "estimated_ship_business_days": days}
        summary = f"Your order {order_id} is packed and should ship within {_days(days)}."
        if api.cancels_orders and rng.random() < 0.5:
            turns = _order_lookup_turns(rng, order_id, result, summary)
            return turns, rng.choice(_FOLLOW_CANCEL), "cancel_order", {"order_id": order_id}
        typed_address, address = _address(rng)
        text = rng.choice(_FOLLOW_ADDRESS).format(address=typed_address)
        turns = _order_lookup_turns(rng, order_id, result, summary)
        return turns, text, "update_shipping_address", {"order_id": order_id, "address": address}

    carrier = rng.choice(CARRIERS)
    tracking = _tracking_number(rng, carrier)
    carrier_name = _CARRIER_WORDS[carrier][0]
    if roll < 0.45:  # delivered, and something is wrong with it
        result = {
            "order_id": order_id,
            "status": "delivered",
            "carrier": carrier,
            "tracking_number": tracking,
        }
        summary = f"Your order {order_id} was delivered by {carrier_name} (tracking number {tracking})."
        reason = rng.choice(("damaged", "wrong_item", "doesnt_fit"))
        text = f"Yes it came, but {rng.choice(_REASON_PHRASES[reason])}. I want to return it."
        text, refund = _refund_method(rng, api, text)
        turns = _order_lookup_turns(rng, order_id, result, summary)
        return turns, text, "start_return", {"order_id": order_id, "reason": reason, **refund}

    days = rng.randint(1, 5)
    result = {
        "order_id": order_id,
        "status": "shipped",
        "carrier": carrier,
        "tracking_number": tracking,
        "estimated_delivery_business_days": days,
    }
    summary = (
        f"Your order {order_id} has shipped with {carrier_name} (tracking number {tracking}) "
        f"and should arrive within {_days(days)}."
    )
    turns = _order_lookup_turns(rng, order_id, result, summary)
    if roll < 0.85:
        args = {"tracking_number": tracking, "carrier": carrier}
        return turns, rng.choice(_FOLLOW_TRACK), api.track_tool, args
    return turns, rng.choice(_FOLLOW_THANKS), None, "You're welcome! Let me know if there's anything else."


# --------------------------------------------------------------------------------------------------
# The two versions of the backend API


@dataclass(frozen=True)
class RouterApi:
    """One version of the shop's backend API as the teacher uses it: what it is told, the tools it
    calls, and the traffic customers send while it is live."""

    system_prompt: str
    tools: list[dict[str, Any]]
    track_tool: str
    """The name of the tool that tracks a package."""
    refund_method_required: bool
    """Whether ``start_return`` takes a ``refund_method``."""
    cancels_orders: bool
    """Whether ``cancel_order`` exists (and customers ask to cancel)."""
    new_wording: float
    """The share of order-status, tracking and search queries typed in the new app's wording."""
    intents: tuple[tuple[_IntentFn, float], ...]
    tools_tokens: int = field(init=False)
    _intent_cum: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tools_tokens", estimate_tokens(orjson.dumps(self.tools).decode()))
        object.__setattr__(self, "_intent_cum", list(itertools.accumulate(w for _, w in self.intents)))

    def intent(self, rng: random.Random) -> _IntentFn:
        """Draw what the customer wants, by the intents' weights."""
        return self.intents[bisect.bisect_left(self._intent_cum, rng.random() * self._intent_cum[-1])][0]

    @property
    def tool_names(self) -> set[str]:
        """The names of the API's tools."""
        return {tool["function"]["name"] for tool in self.tools}


API_V1 = RouterApi(
    system_prompt=SYSTEM_PROMPT,
    tools=TOOLS,
    track_tool="track_shipment",
    refund_method_required=False,
    cancels_orders=False,
    new_wording=0.0,
    intents=_INTENTS,
)
"""The API the demo starts with: seven tools."""

API_V2 = RouterApi(
    system_prompt=SYSTEM_PROMPT_V2,
    tools=TOOLS_V2,
    track_tool="track_package",
    refund_method_required=True,
    cancels_orders=True,
    new_wording=0.5,
    intents=(*_INTENTS, (_cancel_order, 7)),
)
"""The API after the backend release: ``track_package`` (was ``track_shipment``), ``start_return``
with a required ``refund_method``, and ``cancel_order`` for the new cancellation intent."""


def make_conversation(rng: random.Random, api: RouterApi = API_V1) -> Conversation:
    """One clean router conversation under ``api`` and the teacher's answer (a tool call or a plain-text
    reply)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": api.system_prompt}]
    roll = rng.random()
    if roll < 0.1:
        earlier, text, name, answer = _follow_up(rng, api)
        messages.extend(earlier)
    else:
        if roll < 0.2:
            messages.append({"role": "user", "content": rng.choice(_GREETINGS)})
            messages.append({"role": "assistant", "content": rng.choice(_GREETING_REPLIES)})
        text, name, answer = api.intent(rng)(rng, api)
    messages.append({"role": "user", "content": text})
    if name is None:
        return Conversation(messages, api.tools, api.tools_tokens, [], answer)
    return Conversation(messages, api.tools, api.tools_tokens, [(name, arguments_json(answer))], None)


# --------------------------------------------------------------------------------------------------
# Personal data, where the router's tools take it

_COURIER_PHONE = (
    "The courier can reach me on {value} for the delivery.",
    "Please give the driver my number {value} too.",
)
_CALL_BACK = {
    PiiKind.PHONE: ("Please call me back on {value}", "call back on {value}"),
    PiiKind.EMAIL: ("Please email me at {value} about it.", "reply to {value}"),
}
_NOTED_EMAIL = "I've noted {value} as your contact address."


def plant_personal_data(
    conversation: Conversation, rng: random.Random
) -> tuple[Conversation, tuple[PlantedPii, ...]]:
    """``conversation`` with one customer's contact or payment detail in it, as real support chats carry.

    Where the teacher's answer would use it, it does: an address update gets the courier's phone number
    in its ``address``, a hand-over to a human the call-back number or e-mail in its ``reason``, and a
    plain-text reply confirms the e-mail address half the time. Otherwise the value is only said in the
    customer's last message (:func:`flywheel.demo.personal_data.plant_in_user_message`).
    """
    if conversation.tool_calls:
        name, arguments = conversation.tool_calls[0]
        if name in ("update_shipping_address", "talk_to_human"):
            planted = orjson.loads(arguments)
            if name == "update_shipping_address":
                kind = PiiKind.PHONE
                value = fake_value(kind, rng)
                planted["address"]["phone"] = value
                sentence = rng.choice(_COURIER_PHONE).format(value=value)
            else:
                kind = rng.choice(tuple(_CALL_BACK))
                value = fake_value(kind, rng)
                said, summary = _CALL_BACK[kind]
                planted["reason"] = f"{planted['reason']}; {summary.format(value=value)}"
                sentence = said.format(value=value)
            calls = [(name, arguments_json(planted)), *conversation.tool_calls[1:]]
            changed = with_user_sentence(conversation, sentence)._replace(tool_calls=calls)
            return changed, (PlantedPii(kind, value),)
    elif conversation.content is not None and rng.random() < 0.5:
        planted_email, found = plant_in_user_message(conversation, rng, PiiKind.EMAIL)
        content = append_sentence(conversation.content, _NOTED_EMAIL.format(value=found[0].value))
        return planted_email._replace(content=content), found
    return plant_in_user_message(conversation, rng)
