package hostile

import (
	"context"
	"net/http"

	"github.com/podgate/podgate/internal/lab"
)

// Metrics is one scrape of a Prometheus text endpoint ([lab.Metrics]).
type Metrics = lab.Metrics

// Scrape reads url (a /metrics endpoint) with client and parses it
// ([lab.Scrape]).
func Scrape(ctx context.Context, client *http.Client, url string) (Metrics, error) {
	return lab.Scrape(ctx, client, url)
}
