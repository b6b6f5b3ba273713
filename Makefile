# The entry point for people; CMake does the work.
#   make            build (build/)
#   make run        build, then start emitd on a local development config
#   make test       build normal and ASan+UBSan trees, run every test in both
#   make deps       install the Debian packages (root)
JOBS ?= $(shell nproc)
BUILD ?= build
ASAN ?= build-asan

.PHONY: all build asan test test-fast run deps clean
all: build

deps:
	sh scripts/deps.sh

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

asan:
	cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DEMD_SANITIZE=ON >/dev/null
	cmake --build $(ASAN) -j$(JOBS)

# Every test in the normal build, then again under ASan + UBSan.
test: build asan
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)
	cd $(ASAN) && ctest --output-on-failure -j$(JOBS)

test-fast: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

run: build
	sh scripts/run-dev.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN)
