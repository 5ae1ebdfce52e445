package main

import (
	"context"
	"fmt"
	"os"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// tracingEnabled reports whether OpenTelemetry's standard variables ask
// for traces: an OTLP endpoint is set and OTEL_TRACES_EXPORTER is not
// "none" (OTEL_SDK_DISABLED=true turns it off too). Off by default.
func tracingEnabled(env map[string]string) bool {
	if env["OTEL_SDK_DISABLED"] == "true" || env["OTEL_TRACES_EXPORTER"] == "none" {
		return false
	}
	return env["OTEL_EXPORTER_OTLP_ENDPOINT"] != "" || env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] != ""
}

// setupTracing builds an OTLP/HTTP exporter configured by the OTEL_*
// variables (the exporter reads them itself) and returns the provider and
// its shutdown, or a nil provider when tracing is off.
func setupTracing(ctx context.Context, env map[string]string) (trace.TracerProvider, func(context.Context) error, error) {
	if !tracingEnabled(env) {
		return nil, func(context.Context) error { return nil }, nil
	}
	if env["OTEL_SERVICE_NAME"] == "" {
		os.Setenv("OTEL_SERVICE_NAME", "ssenode")
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("otlp exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.Environment())
	if err != nil {
		res = resource.Default()
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	return tp, tp.Shutdown, nil
}
