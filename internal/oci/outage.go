package oci

import "regexp"

// SimulatedOutage starts the phrase that names a simulated outage in every error and answer
// the outage simulator makes up: "lifeboat simulated outage: <mode>".
const SimulatedOutage = "lifeboat simulated outage: "

// simulatedOutage finds the phrase with its mode: a word with an optional -<status>, and a
// second one after a slash for flaky ("dns", "http-503", "flaky/http-429").
var simulatedOutage = regexp.MustCompile(SimulatedOutage + `([a-z]{1,16}(?:-[0-9]{3})?(?:/[a-z]{1,16}(?:-[0-9]{3})?)?)`)

// SimulatedOutageIn returns the phrase naming a simulated outage, "lifeboat simulated outage:
// <mode>", when text holds one, and "" otherwise. It finds it in errors that quote others'
// text (the resolver's "every endpoint is down" quotes the endpoints' last failures), and
// returns the phrase alone, so that a client can be told of the outage and of nothing else.
func SimulatedOutageIn(text string) string {
	return simulatedOutage.FindString(text)
}
