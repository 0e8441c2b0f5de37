"""Multi-step tool workflows with real-shaped data (4-5 requests per run).

The tool results look like the ones real agent benchmarks and APIs return
(tau-bench's retail and airline tools, Open-Meteo's geocoding and forecast):
a tool that answers with a bare id, JSON objects with optional fields
(`address2`, `membership`, `admin1`), lists whose length differs from run
to run (a user's orders, search results, shipment events), and values that
flow from one tool's output into the next call (a user id, the first search
result's flight number, coordinates). The model is a careful one: the same
words and branches in every run, its own values (names, ids, dates,
numbers) in each. Everything is drawn from a seeded generator.

`build()` returns one Workload; each flow also has `probation` runs: live
traffic after the recorded runs, through the recording proxy, where a
template on probation is verified against the provider.
"""
from __future__ import annotations

import json
import random
import string
from datetime import date, timedelta
from typing import Callable, Union

from .script import Reply, Run, Step, Turn
from .workloads import Flow, Workload

SYSTEM = ("You are a customer-service agent for an online store and travel desk. Use the tools to look things "
          "up; never guess an id. Answer in one sentence.")

FIRST = ["Sofia", "Yusuf", "Mei", "Lucas", "Amara", "Noah", "Ines", "Omar", "Freya", "Kenji", "Lina", "Mateo",
         "Zara", "Elias", "Nia", "Arjun", "Clara", "Dmitri", "Leila", "Tomas", "Hana", "Felix", "Ayla", "Rafael"]
LAST = ["Rossi", "Khan", "Wang", "Moreau", "Okafor", "Jensen", "Garcia", "Haddad", "Berg", "Sato", "Novak",
        "Silva", "Ahmed", "Fischer", "Mensah", "Patel", "Dubois", "Ivanova", "Nasser", "Costa", "Kimura", "Weber"]
PRODUCTS = [("T-Shirt", "9523456873"), ("Desk Lamp", "6817146515"), ("Water Bottle", "8310926033"),
            ("Sneakers", "6938111410"), ("Backpack", "2524789262"), ("Headphones", "9494281769"),
            ("Yoga Mat", "4635925001"), ("Coffee Maker", "7996920482")]
OPTIONS = [{"color": "blue", "size": "M"}, {"color": "black"}, {"capacity": "750ml"}, {"size": "9"},
           {"material": "leather"}, {}]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS"]
AIRPORTS = [("JFK", "ORD"), ("SFO", "SEA"), ("BOS", "MIA"), ("LAX", "DEN"), ("ATL", "DFW"), ("EWR", "LAS"),
            ("PHX", "MSP"), ("IAH", "DTW"), ("CLT", "PHL"), ("MCO", "LGA")]
# (city as the user writes it, latitude, longitude, country, code, region)
CITIES = [("Porto", 41.14961, -8.61099, "Portugal", "PT", "Porto"), ("Lyon", 45.74846, 4.84671, "France", "FR", None),
          ("Graz", 47.06667, 15.45, "Austria", "AT", "Styria"), ("Leeds", 53.79648, -1.54785, "United Kingdom", "GB", "England"),
          ("Turku", 60.45148, 22.26869, "Finland", "FI", None), ("Ghent", 51.05, 3.71667, "Belgium", "BE", "Flanders"),
          ("Bergen", 60.39299, 5.32415, "Norway", "NO", "Vestland"), ("Bilbao", 43.26271, -2.92528, "Spain", "ES", None),
          ("Utrecht", 52.09083, 5.12222, "Netherlands", "NL", "Utrecht"), ("Aarhus", 56.15674, 10.21076, "Denmark", "DK", None),
          ("Krakow", 50.06143, 19.93658, "Poland", "PL", "Lesser Poland"), ("Bologna", 44.49381, 11.33875, "Italy", "IT", None),
          ("Seville", 37.38283, -5.97317, "Spain", "ES", "Andalusia"), ("Tartu", 58.38062, 26.72509, "Estonia", "EE", None)]


def tool(tool_name: str, description: str, **props: str) -> dict:
    return {"type": "function", "function": {"name": tool_name, "description": description, "parameters": {
        "type": "object", "properties": {k: {"type": v} for k, v in props.items()}, "required": list(props)}}}


TOOLS = (
    tool("find_user_id_by_email", "Find a user id by email", email="string"),
    tool("get_user_details", "Get a user's profile", user_id="string"),
    tool("get_order_details", "Get an order", order_id="string"),
    tool("track_shipment", "Track a shipment by tracking id", tracking_id="string"),
    tool("search_direct_flight", "Search direct flights", origin="string", destination="string", date="string"),
    tool("book_reservation", "Book a reservation", user_id="string", flights="array", passengers="array",
         cabin="string", payment_id="string"),
    tool("send_email", "Send an email", to="string", subject="string"),
    tool("geocode", "Find coordinates of a place", name="string"),
    tool("get_forecast", "Daily forecast at coordinates", latitude="number", longitude="number", days="integer"),
    tool("get_daily_forecast", "Daily forecast at coordinates between two dates", latitude="number",
         longitude="number", start_date="string", end_date="string"),
    tool("get_air_quality", "Current air quality at coordinates", latitude="number", longitude="number"),
)


def call(name: str, args: dict, result) -> Step:
    """A tool call and its output: JSON for data, the text itself for a bare value."""
    return Step(Reply(tool_calls=((name, args),)), (result if isinstance(result, str) else json.dumps(result),))


def say(text: str) -> Step:
    return Step(Reply(content=text))


class Person:
    def __init__(self, r: random.Random):
        self.first, self.last = r.choice(FIRST), r.choice(LAST)
        self.email = f"{self.first.lower()}.{self.last.lower()}{r.randint(1, 999)}@example.com"
        self.user_id = f"{self.first.lower()}_{self.last.lower()}_{r.randint(1000, 9999)}"
        self.dob = f"19{r.randint(55, 99)}-{r.randint(1, 12):02d}-{r.randint(10, 28)}"
        self.zip = f"{r.randint(10000, 99999)}"
        self.street = f"{r.randint(10, 999)} {r.choice(['Elm', 'Oak', 'Cedar', 'Pine', 'Maple'])} Street"
        self.city = r.choice(["Denver", "Austin", "Columbus", "Portland", "Raleigh", "Madison", "Boise", "Tucson",
                              "Omaha", "Fresno", "Tampa", "Dayton", "Spokane", "Albany", "Eugene", "Reno",
                              "Wichita", "Lansing", "Provo", "Mesa", "Plano", "Irvine", "Salem", "Akron"])
        self.r = r

    def details(self, orders: list[str] | None = None, payments: list[dict] | None = None) -> dict:
        r = self.r
        address = {"address1": self.street, "city": self.city, "country": "USA", "state": "CO", "zip": self.zip}
        if r.random() < 0.5:
            address["address2"] = f"Suite {r.randint(100, 999)}"
        out: dict = {"user_id": self.user_id, "name": {"first_name": self.first, "last_name": self.last},
                     "address": address, "email": self.email, "dob": self.dob}
        if payments is not None:
            out["payment_methods"] = payments
        if orders is not None:
            out["orders"] = orders
        if r.random() < 0.4:
            out["membership"] = r.choice(["gold", "silver", "regular"])
        return out


def _code(r: random.Random, n: int = 6) -> str:
    # At least one digit: real reservation codes mix both, and a code is an id.
    body = "".join(r.choice(string.ascii_uppercase + string.digits) for _ in range(n - 1))
    return body + r.choice(string.digits)


# -- flow 1: a bare-id lookup, then profile, order and shipment ---------------------------------

def order_status(r: random.Random) -> list[Turn]:
    p = Person(r)
    orders = [f"#W{r.randint(1000000, 9999999)}" for _ in range(r.randint(1, 4))]
    items = []
    for _ in range(r.randint(1, 3)):
        name, product = r.choice(PRODUCTS)
        item = {"name": name, "product_id": product, "item_id": str(r.randint(1000000000, 9999999999)),
                "price": round(r.uniform(9, 300), 2)}
        options = r.choice(OPTIONS)
        if options:
            item["options"] = options
        items.append(item)
    total = round(sum(i["price"] for i in items), 2)
    tracking = str(r.randint(100000000000, 999999999999))
    carrier = r.choice(CARRIERS)
    delivered = f"2026-{r.randint(1, 11):02d}-{r.randint(10, 28)}"
    order = {"order_id": orders[0], "user_id": p.user_id, "status": "delivered", "items": items,
             "fulfillments": [{"tracking_id": [tracking], "item_ids": [i["item_id"] for i in items]}],
             "payment_history": [{"transaction_type": "payment", "amount": total,
                                  "payment_method_id": f"credit_card_{r.randint(1000000, 9999999)}"}]}
    events = [{"time": f"2026-{r.randint(1, 11):02d}-{r.randint(10, 28)}T{r.randint(6, 20):02d}:00:00Z",
               "location": r.choice(["Memphis, TN", "Louisville, KY", "Reno, NV", "Newark, NJ", "Ontario, CA",
                                     "Allentown, PA", "Hebron, KY", "Fort Worth, TX", "Rockford, IL", "Chino, CA",
                                     "Tracy, CA", "Lakeland, FL", "Joliet, IL", "Romulus, MI"]),
               "status": "in transit"} for _ in range(r.randint(1, 4))]
    shipment = {"tracking_id": tracking, "carrier": carrier, "status": "delivered", "delivered_on": delivered,
                "events": events}
    if r.random() < 0.5:
        shipment["signed_by"] = p.last.upper()
    return [Turn(f"Hi, I'm {p.first} {p.last} ({p.email}). What happened to my most recent order?", TOOLS, (
        call("find_user_id_by_email", {"email": p.email}, p.user_id),  # the bare id, as tau-bench's tool answers
        call("get_user_details", {"user_id": p.user_id}, p.details(orders=orders)),
        call("get_order_details", {"order_id": orders[0]}, order),
        call("track_shipment", {"tracking_id": tracking}, shipment),
        say(f"{p.first}, your order {orders[0]} was delivered on {delivered} by {carrier} (tracking {tracking})."),
    ))]


# -- flow 2: profile, flight search with a varying list, booking from the first result --------------

def flight_booking(r: random.Random) -> list[Turn]:
    p = Person(r)
    origin, destination = r.choice(AIRPORTS)
    date = f"2027-0{r.randint(1, 9)}-{r.randint(10, 28)}"
    payments = [{"source": "credit_card", "id": f"credit_card_{r.randint(1000000, 9999999)}",
                 "brand": r.choice(["visa", "mastercard"]), "last_four": str(r.randint(1000, 9999))}]
    if r.random() < 0.5:
        payments.append({"source": "gift_card", "id": f"gift_card_{r.randint(1000000, 9999999)}",
                         "amount": r.randint(10, 300)})
    flights = []
    for _ in range(r.randint(1, 4)):
        hour = r.randint(5, 20)
        flight = {"flight_number": f"HAT{r.randint(100, 299)}", "origin": origin, "destination": destination,
                  "scheduled_departure_time_est": f"{hour:02d}:00:00",
                  "scheduled_arrival_time_est": f"{hour + r.randint(1, 3):02d}:30:00", "status": "available",
                  "available_seats": {"basic_economy": r.randint(0, 20), "economy": r.randint(1, 20),
                                      "business": r.randint(0, 10)},
                  "prices": {"basic_economy": r.randint(50, 99), "economy": r.randint(100, 199),
                             "business": r.randint(200, 499)}}
        flights.append(flight)
    first = flights[0]
    price = first["prices"]["economy"]
    reservation = _code(r)
    passenger = {"first_name": p.first, "last_name": p.last, "dob": p.dob}
    booking = {"reservation_id": reservation, "user_id": p.user_id, "origin": origin, "destination": destination,
               "flight_type": "one_way", "cabin": "economy",
               "flights": [{"flight_number": first["flight_number"], "date": date, "price": price}],
               "passengers": [passenger], "payment_history": [{"payment_id": payments[0]["id"], "amount": price}],
               "created_at": f"2026-12-0{r.randint(1, 9)}T{r.randint(10, 23)}:{r.randint(10, 59)}:00",
               "status": "confirmed"}
    return [Turn(f"I'm user {p.user_id}. Book the first available economy flight from {origin} to {destination} "
                 f"on {date} for me and pay with my credit card.", TOOLS, (
        call("get_user_details", {"user_id": p.user_id}, p.details(payments=payments)),
        call("search_direct_flight", {"origin": origin, "destination": destination, "date": date}, flights),
        call("book_reservation", {"user_id": p.user_id, "flights": [{"flight_number": first["flight_number"], "date": date}],
                                  "passengers": [passenger], "cabin": "economy", "payment_id": payments[0]["id"]}, booking),
        call("send_email", {"to": p.email, "subject": f"Reservation {reservation}"}, "queued"),
        say(f"Booked {first['flight_number']} from {origin} to {destination} on {date}: reservation {reservation}, "
            f"{price} USD, confirmation sent to {p.email}."),
    ))]


# -- flow 3: geocoding with a varying list, coordinates into the next two calls ------------------------

def _places(r: random.Random, name: str, lat: float, lon: float, country: str, code: str,
            region: str | None) -> tuple[list[dict], dict]:
    """A geocoding answer: 1-3 places of that name, the first the right one, optional fields."""
    results = []
    for i in range(r.randint(1, 3)):
        place = {"id": r.randint(1000000, 9999999), "name": name, "latitude": lat if i == 0 else round(lat + r.uniform(-9, 9), 5),
                 "longitude": lon if i == 0 else round(lon + r.uniform(-9, 9), 5), "country": country,
                 "country_code": code, "timezone": "Europe/" + r.choice(["Lisbon", "Paris", "Vienna", "London"])}
        if i == 0 and region:
            place["admin1"] = region
        if r.random() < 0.6:
            place["population"] = r.randint(20000, 900000)
        results.append(place)
    return results, {"results": results, "generationtime_ms": round(r.uniform(0.2, 3.0), 6)}


def _daily(r: random.Random, lat: float, lon: float, timezone: str, days: list[str]) -> tuple[dict, list, list, list]:
    """A daily forecast for `days`: (answer, minima, maxima, rain)."""
    tmax = [round(r.uniform(-5, 18), 1) for _ in days]
    tmin = [round(t - r.uniform(2, 9), 1) for t in tmax]
    rain = [round(r.uniform(0, 12), 1) for _ in days]
    forecast = {"latitude": lat, "longitude": lon, "timezone": timezone, "elevation": r.randint(2, 400),
                "daily_units": {"temperature_2m_max": "°C", "temperature_2m_min": "°C", "precipitation_sum": "mm"},
                "daily": {"time": days, "temperature_2m_max": tmax, "temperature_2m_min": tmin, "precipitation_sum": rain}}
    return forecast, tmin, tmax, rain


def _air(r: random.Random, lat: float, lon: float, day: str) -> tuple[dict, int]:
    aqi = r.randint(8, 60)
    return {"latitude": lat, "longitude": lon, "current": {"time": f"{day}T{r.randint(10, 23)}:00",
                                                           "european_aqi": aqi, "pm2_5": round(r.uniform(1, 20), 1)}}, aqi


def weather(r: random.Random) -> list[Turn]:
    name, lat, lon, country, code, region = r.choice(CITIES)
    results, geo = _places(r, name, lat, lon, country, code, region)
    day = r.randint(1, 27)
    days = [f"2026-12-{day:02d}", f"2026-12-{day + 1:02d}"]
    forecast, tmin, tmax, rain = _daily(r, lat, lon, results[0]["timezone"], days)
    air, aqi = _air(r, lat, lon, days[0])
    return [Turn(f"What will the weather be like in {name} tomorrow?", TOOLS, (
        call("geocode", {"name": name}, geo),
        call("get_forecast", {"latitude": lat, "longitude": lon, "days": 2}, forecast),
        call("get_air_quality", {"latitude": lat, "longitude": lon}, air),
        say(f"Tomorrow in {name}: {tmin[1]} to {tmax[1]} °C with {rain[1]} mm of rain; the air quality index is {aqi}."),
    ))]


# -- flow 4: the same on the run's own day: tomorrow's date is today's plus one ------------------------

def forecast_tomorrow(r: random.Random) -> tuple[str, list[Turn]]:
    """The run's own day is in the system prompt (as agents put it there); the
    forecast is asked for tomorrow, a date the model counts (across month and
    year ends) and that no message spells."""
    today = date(2026, 1, 1) + timedelta(days=r.randint(0, 729))
    tomorrow = (today + timedelta(days=1)).isoformat()
    name, lat, lon, country, code, region = r.choice(CITIES)
    results, geo = _places(r, name, lat, lon, country, code, region)
    forecast, tmin, tmax, rain = _daily(r, lat, lon, results[0]["timezone"], [tomorrow])
    air, aqi = _air(r, lat, lon, today.isoformat())
    return f"{SYSTEM} Today is {today.isoformat()}.", [Turn(f"What will the weather be like in {name} tomorrow?", TOOLS, (
        call("geocode", {"name": name}, geo),
        call("get_daily_forecast", {"latitude": lat, "longitude": lon, "start_date": tomorrow, "end_date": tomorrow},
             forecast),
        call("get_air_quality", {"latitude": lat, "longitude": lon}, air),
        say(f"Tomorrow in {name}: {tmin[0]} to {tmax[0]} °C with {rain[0]} mm of rain; the air quality index is {aqi}."),
    ))]

# A flow makes one run's turns, or (its own system prompt, turns) when the prompt carries a run's value.
FLOWS: dict[str, Callable[[random.Random], Union[list[Turn], tuple[str, list[Turn]]]]] = {
    "order-status (bare id)": order_status, "flight-booking (varying list)": flight_booking,
    "weather (coordinates)": weather, "forecast (tomorrow's date)": forecast_tomorrow,
}


def _signature(turns: list[Turn]) -> list[str]:
    """Every value a run shows, to keep the recorded runs of a flow apart in every one."""
    return [json.dumps([s.reply.describe(), s.results]) for t in turns for s in t.steps]


def build(recorded: int = 3, held_out: int = 4, probation: int = 6, seed: str = "tools") -> Workload:
    flows = []
    for name, make in FLOWS.items():
        r = random.Random(f"{seed}:{name}")

        def run(tag: str) -> Run:
            made = make(r)
            system, turns = made if isinstance(made, tuple) else (SYSTEM, made)
            return Run(f"tools/{name}/{tag}", name, system, turns)

        rec: list[Run] = []
        while len(rec) < recorded:
            candidate = run(f"rec{len(rec)}")
            # The recorded runs of a flow must differ in what a template keys on
            # (the user's words): two runs for one city are one value, not two.
            user = candidate.turns[0].user
            if all(user != other.turns[0].user for other in rec):
                rec.append(candidate)
        flows.append(Flow(name, rec, [run(f"held{i}") for i in range(held_out)],
                          [run(f"live{i}") for i in range(probation)]))
    return Workload("tool workflows (real-shaped data)", flows, {},
                    note="4-5 requests per run: bare-id results, JSON with optional fields and varying lists, "
                         "values flowing into later calls")
