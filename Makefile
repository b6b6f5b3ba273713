# The entry point for people; CMake does the work.
#   make            build (build/)
#   make run        build, then start emitd on a local development config
#   make test       build normal and ASan+UBSan trees, run every test in both,
#                   and each fuzz target for a short while
#   make fuzz       build the libFuzzer tree (clang), run each target
#   make deps       install the Debian packages (root)
JOBS ?= $(shell nproc)
BUILD ?= build
ASAN ?= build-asan
FUZZ ?= build-fuzz

.PHONY: all build asan fuzz test test-fast run deps clean
all: build

deps:
	sh scripts/deps.sh

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

asan:
	cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DEMD_SANITIZE=ON >/dev/null
	cmake --build $(ASAN) -j$(JOBS)

# Every fuzz target for EMD_FUZZ_SECONDS (20) each; fuzz/run.sh goes longer.
fuzz:
	CC=clang cmake -S . -B $(FUZZ) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DEMD_FUZZ=ON >/dev/null
	cmake --build $(FUZZ) -j$(JOBS)
	cd $(FUZZ) && ctest --output-on-failure -j$(JOBS) -R fuzz/

# Every test in the normal build, then again under ASan + UBSan.
test: build asan fuzz
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)
	cd $(ASAN) && ctest --output-on-failure -j$(JOBS)

test-fast: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

run: build
	sh scripts/run-dev.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZ)
