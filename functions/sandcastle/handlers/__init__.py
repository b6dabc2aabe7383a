"""One thin module per Lambda: parse the event, call one domain function, return a plain dict."""
