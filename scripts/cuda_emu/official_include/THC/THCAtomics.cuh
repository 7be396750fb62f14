// Stand-in for <THC/THCAtomics.cuh> in the emulated build of the official DCNv4 sources (see emu_official.h).
#pragma once
#include "emu_official.h"
