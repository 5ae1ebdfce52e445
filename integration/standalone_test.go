package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The repository stands alone: no file names a path outside it, and every
// relative link in its Markdown stays inside it.
func TestRepositoryStandsAlone(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// Built by concatenation so that this file does not match itself.
	outside := []string{".." + "/shared", "/work" + "/"}
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	checked := 0
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != root && d.Name() == ".git" { // a directory, or a worktree's pointer file
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if path != root && d.Name() == "bin" {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.IndexByte(b, 0) >= 0 {
			return nil // binary (a chart image)
		}
		rel, _ := filepath.Rel(root, path)
		checked++
		for i, line := range strings.Split(string(b), "\n") {
			for _, o := range outside {
				if strings.Contains(line, o) {
					t.Errorf("%s:%d names %q, outside the repository: %s", rel, i+1, o, strings.TrimSpace(line))
				}
			}
			if !strings.HasSuffix(path, ".md") {
				continue
			}
			for _, m := range link.FindAllStringSubmatch(line, -1) {
				target, _, _ := strings.Cut(m[1], "#")
				if target == "" || strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				if filepath.IsAbs(target) {
					t.Errorf("%s:%d links to the absolute path %s", rel, i+1, target)
					continue
				}
				in, err := filepath.Rel(root, filepath.Join(filepath.Dir(path), target))
				if err != nil || in == ".." || strings.HasPrefix(in, ".."+string(filepath.Separator)) {
					t.Errorf("%s:%d links to %s, outside the repository", rel, i+1, target)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("checked %d files under %s; expected the whole repository", checked, root)
	}
}
