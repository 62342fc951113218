// Package hack holds the project's scripts (set-up, image, control plane
// binaries, govulncheck) and no Go code: its tests check the scripts.
//
// The one list of Debian packages that the set-up needs is packages.txt;
// deps.sh installs a group of it (demo, test, image) when something is
// missing, and is what `make demo`, `make test`, `make deps`, .ci/run and
// image.sh call. The tests run deps.sh on a PATH of stand-ins (an id that
// says who we are, an apt-get that logs its calls and "installs" by
// creating commands), so they never call the real apt-get.
package hack
