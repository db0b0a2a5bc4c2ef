// The dev dependency parse-prometheus-text-format ships no types; test/metrics.test.ts says what
// it reads of the result.
declare module "parse-prometheus-text-format" {
  /** Parses Prometheus text exposition format into metric families; throws on what it cannot parse. */
  export default function parsePrometheusTextFormat(text: string): unknown;
}
