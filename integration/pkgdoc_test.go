package integration

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every package in the repository says what it is for.
func TestEveryPackageHasDocComment(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		name := d.Name()
		if path != root && (strings.HasPrefix(name, ".") || name == "bin" || name == "testdata" || name == "vendor") {
			return filepath.SkipDir
		}
		// One package per directory (tests aside): parse each non-test
		// file's package clause and comments.
		entries, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		pkg, documented, files := "", false, 0
		for _, e := range entries {
			n := e.Name()
			if e.IsDir() || !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(path, n), nil, parser.ParseComments|parser.PackageClauseOnly)
			if err != nil {
				return err
			}
			files++
			pkg = f.Name.Name
			if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
				documented = true
			}
		}
		if files == 0 {
			return nil
		}
		checked++
		if !documented {
			rel, _ := filepath.Rel(root, path)
			t.Errorf("package %s in %s has no doc comment", pkg, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 6 {
		t.Fatalf("checked only %d packages: wrong root %s?", checked, root)
	}
}
