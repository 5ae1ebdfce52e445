// Command sseload is the load generator and checker of ssecluster: it
// opens N Server-Sent Events clients over one or more nodes, publishes
// events that carry their send time and sequence number, and checks that
// every client receives every event once, in order, with the ID the
// publisher was given, reconnecting with Last-Event-ID like EventSource.
// It reports latency, loss, duplicates, reconnects and its own CPU as JSON.
//
// Each client is one goroutine on a raw TCP connection that writes its
// HTTP/1.1 request by hand and decodes the chunked SSE body in one small
// buffer, so that the generator stays lean next to the node it measures.
// See README.md for the flags and examples.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// Exit codes.
const (
	exitOK          = 0
	exitCheckFailed = 1
	exitUsage       = 2
	exitError       = 3
)

func main() {
	os.Exit(mainRun(os.Args[1:], os.Stdout, os.Stderr))
}

func mainRun(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			fmt.Fprintln(stderr, "sseload:", err)
			return exitUsage
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "sseload:", err)
			return exitError
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitError
	}
	if err := writeReport(rep, cfg.Out, stdout); err != nil {
		fmt.Fprintln(stderr, err)
		return exitError
	}
	if !rep.Check.Passed {
		fmt.Fprintf(stderr, "sseload: check failed: %v\n", rep.Check.Failures)
		if cfg.Check {
			return exitCheckFailed
		}
	}
	return exitOK
}

func writeReport(rep *Report, path string, stdout io.Writer) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("sseload: encode report: %w", err)
	}
	b = append(b, '\n')
	if path == "" {
		_, err = stdout.Write(b)
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("sseload: write report: %w", err)
	}
	return nil
}
