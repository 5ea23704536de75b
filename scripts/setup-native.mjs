console.log("setup-native: placeholder")
