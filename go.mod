module github.com/ssecluster/ssecluster

go 1.26
